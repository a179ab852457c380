"""Domain LoRA for the inpainting UNets: teach Kandinsky 2.2 or SD2-inpainting the project's own objects in the
project's own scenes (the DreamBooth-inpainting recipe: object masks and random masks, the label as prompt).

    python -m backend train-generator --project 3 --engine kandinsky      # train now (as the job does)
    python -m backend train-generator --project 3 --engine sd2 --list     # versions and held-out losses
    python -m backend train-generator --project 3 --engine sd2 --activate base   # roll back (or vN)

Pairs come from the annotations `fit` kept (each labeled brush / polygon region: a square crop around
it at GENERATOR_TRAIN_SIZE, its mask, GENERATOR_PROMPT_TEMPLATE with its label). A fifth of them is
held out; their denoising loss (fixed noise and timesteps) is measured before and after training. The
LoRA (peft, on the UNet's attention and feed-forward projections) is saved in diffusers' LoRA format as
a new version, and activated only when the held-out loss improved.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend.core.errors import BackendError, InputError
from backend.core.settings import Settings, get_settings
from backend.io.images import read_task_image
from backend.learning.annotations import AnnotationStore
from backend.segmentation.masks import region_mask
from backend.synthesis.generator_versions import WEIGHTS, GeneratorVersions
from backend.synthesis.inpainting import ENGINES, get_inpainter, region_crop

logger = logging.getLogger(__name__)
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
ADAPTER = "domain_lora_in_training"  # not "training": a torch.nn.Module attribute


@dataclass
class Pair:
    name: str  # "<annotation id>/<region index>"
    image: torch.Tensor  # 1x3xSxS in -1..1
    mask: torch.Tensor  # 1x1xSxS, 1 = the region to paint
    prompt: str


@dataclass(frozen=True)
class LoraTraining:
    rank: int = 4
    steps: int = 200
    learning_rate: float = 1e-4
    size: int = 512
    holdout_fraction: float = 0.2
    random_mask_share: float = 0.5  # steps that paint a random box instead of the object
    min_pairs: int = 2
    seed: int = 0


# ---------------------------------------------------------------- annotations -> pairs
def domain_pairs(project_id: str, settings: Settings, size: int, template: str) -> tuple[list[Pair], list[str]]:
    """Training pairs from the project's kept annotations, and the reasons of what was skipped."""
    pairs, skipped = [], []
    for item in AnnotationStore(settings.model_dir).load(project_id):
        annotation_id = item.annotation.get("id")
        regions = [r for r in item.result if r.get("type") in ("brushlabels", "polygonlabels")]
        if not regions:
            continue
        try:
            pixels = read_task_image(item.task["data"][item.image_key], settings, item.task.get("id")).pixels(settings)
        except (BackendError, KeyError, TypeError) as exc:
            skipped.append(f"annotation {annotation_id}: image unusable ({exc})")
            continue
        height, width = pixels.shape[:2]
        for index, result in enumerate(regions):
            labels = (result.get("value") or {}).get(result["type"]) or []
            try:
                mask = region_mask(result, height, width)
            except ValueError as exc:
                skipped.append(f"annotation {annotation_id} region {index}: {exc}")
                continue
            if not mask.any() or not labels:
                continue
            x, y, side = region_crop(mask)
            crop = Image.fromarray(pixels[y:y + side, x:x + side]).resize((size, size), Image.LANCZOS)
            crop_mask = Image.fromarray(mask[y:y + side, x:x + side].astype(np.uint8) * 255).resize(
                (size, size), Image.NEAREST)
            image = torch.from_numpy(np.asarray(crop, np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
            region = torch.from_numpy(np.asarray(crop_mask, np.float32) / 255.0)[None, None]
            pairs.append(Pair(f"{annotation_id}/{index}", image, region, template.format(label=labels[0])))
    return pairs, skipped


def split_pairs(pairs: list[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(train, held out): about `fraction` of the pairs (at least one) held out, whole annotations at a time, chosen
    by a hash of the annotation id (so a rerun holds out the same ones)."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.name.split("/")[0], []).append(pair)
    wanted = max(1, round(len(pairs) * fraction))
    held: list[Pair] = []
    for key in sorted(groups, key=lambda k: zlib.crc32(k.encode())):
        if len(held) >= wanted or len(held) + len(groups[key]) == len(pairs):
            break
        held += groups[key]
    return [p for p in pairs if p not in held], held


# ---------------------------------------------------------------- the engines' denoising losses
class Denoising:
    """One engine's training objective on a pair: noise the image's latents, predict the noise from the noisy
    latents, the mask and the masked image's latents, conditioned on the prompt."""

    def __init__(self, inpainter):
        from diffusers import DDPMScheduler

        self.inpainter = inpainter
        self.unet = inpainter.unet
        self.scheduler = DDPMScheduler.from_config(inpainter.scheduler.config)
        self._conditions: dict[str, dict] = {}
        self._latents: dict[str, torch.Tensor] = {}  # each pair's image latents: encoded once, not every step

    def conditions(self, prompt: str) -> dict:
        if prompt not in self._conditions:
            with torch.no_grad():
                self._conditions[prompt] = self.encode_prompt(prompt)
        return self._conditions[prompt]

    def encode_prompt(self, prompt: str) -> dict:
        raise NotImplementedError

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unet_input(self, noisy: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                   latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.scheduler.config.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def loss(self, pair: Pair, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The denoising loss of one pair with `mask` as the region to paint (noise and timestep drawn from
        `generator`)."""
        if pair.name not in self._latents:
            with torch.no_grad():
                self._latents[pair.name] = self.encode_image(pair.image)
        latents = self._latents[pair.name]
        noise = torch.randn(latents.shape, generator=generator)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (1,), generator=generator)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            model_input = self.unet_input(noisy, pair.image, mask, latents)
        prediction = self.unet(model_input, timesteps, return_dict=False, **self.conditions(pair.prompt))[0]
        prediction = prediction[:, : latents.shape[1]]  # Kandinsky also predicts the variance
        return F.mse_loss(prediction.float(), self.target(latents, noise, timesteps).float())


class SDDenoising(Denoising):
    """SD2-inpainting: VAE latents x scaling factor, input [noisy, mask, masked-image latents], CLIP text."""

    def encode_prompt(self, prompt: str) -> dict:
        pipe = self.inpainter.pipe
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return {"encoder_hidden_states": pipe.text_encoder(ids)[0]}

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        vae = self.inpainter.pipe.vae
        return vae.encode(image).latent_dist.mean * vae.config.scaling_factor

    def unet_input(self, noisy, image, mask, latents):
        masked = self.encode_image(image * (mask < 0.5))
        small = F.interpolate(mask, size=latents.shape[-2:])
        return torch.cat([noisy, small, masked], dim=1)


class KandinskyDenoising(Denoising):
    """Kandinsky 2.2 decoder-inpaint: MoVQ latents, input [noisy, kept latents, kept mask] (the mask inverted and
    eroded as the pipeline does), the prior's image embedding of the prompt."""

    def encode_prompt(self, prompt: str) -> dict:
        embeds = self.inpainter.prior(prompt, generator=torch.Generator("cpu").manual_seed(0),
                                      num_inference_steps=10).image_embeds
        return {"encoder_hidden_states": None, "added_cond_kwargs": {"image_embeds": embeds}}

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.inpainter.decoder.movq.encode(image)["latents"]

    def unet_input(self, noisy, image, mask, latents):
        from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import prepare_mask

        keep = prepare_mask(F.interpolate(1.0 - (mask > 0.5).float(), latents.shape[-2:], mode="nearest"))
        return torch.cat([noisy, latents * keep, keep], dim=1)


DENOISING = {"sd2": SDDenoising, "kandinsky": KandinskyDenoising}


def random_box_mask(size: int, generator: torch.Generator) -> torch.Tensor:
    """A random rectangle covering 10-50 % of each side (the recipe's random masks)."""
    sides = (torch.rand(2, generator=generator) * 0.4 + 0.1) * size
    corner = torch.rand(2, generator=generator) * (size - sides)
    mask = torch.zeros(1, 1, size, size)
    x0, y0 = int(corner[0]), int(corner[1])
    mask[..., y0:y0 + max(1, int(sides[1])), x0:x0 + max(1, int(sides[0]))] = 1.0
    return mask


def heldout_loss(objective: Denoising, pairs: list[Pair], seed: int) -> float:
    """Mean denoising loss of the held-out pairs with their object masks, the same noise and timesteps each call."""
    with torch.no_grad():
        losses = [float(objective.loss(pair, pair.mask, torch.Generator("cpu").manual_seed(seed + i)))
                  for i, pair in enumerate(pairs)]
    return float(np.mean(losses))


# ---------------------------------------------------------------- training
def train_generator(project_id: int | str, engine: str, settings: Settings | None = None,
                    config: LoraTraining | None = None) -> dict:
    """Train a domain LoRA for `engine` on the project's kept annotations; save it as a version, active when
    its held-out denoising loss improved. Returns the report."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    settings = settings or get_settings()
    if engine not in ENGINES:
        raise InputError(f"unknown inpainting engine {engine!r}; use one of {list(ENGINES)}", "engine")
    config = config or LoraTraining(rank=settings.generator_lora_rank, steps=settings.generator_train_steps,
                                    learning_rate=settings.generator_learning_rate,
                                    size=settings.generator_train_size or settings.synthesis_size)
    started = time.perf_counter()
    pairs, skipped = domain_pairs(str(project_id), settings, config.size, settings.generator_prompt_template)
    if len(pairs) < config.min_pairs:
        raise InputError(f"project {project_id} has {len(pairs)} labeled regions kept for training; a generator "
                         f"LoRA needs at least {config.min_pairs}", "project")
    train, held = split_pairs(pairs, config.holdout_fraction)
    inpainter = get_inpainter(engine, settings)
    with inpainter.lock:
        objective = DENOISING[engine](inpainter)
        unet = objective.unet
        if inpainter.adapters:  # another version of the shared pipeline: measure against the base
            unet.disable_adapters()
        before = heldout_loss(objective, held, config.seed)
        torch.manual_seed(config.seed)
        unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                                    target_modules=TARGET_MODULES), adapter_name=ADAPTER)
        unet.set_adapters([ADAPTER])
        try:
            parameters = [p for name, p in unet.named_parameters() if "lora_" in name]
            for p in parameters:
                p.requires_grad_(True)
            optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate)
            generator = torch.Generator("cpu").manual_seed(config.seed)
            unet.train()
            for step in range(config.steps):
                pair = train[int(torch.randint(len(train), (1,), generator=generator))]
                random_mask = float(torch.rand(1, generator=generator)) < config.random_mask_share
                mask = random_box_mask(config.size, generator) if random_mask else pair.mask
                loss = objective.loss(pair, mask, generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if (step + 1) % 10 == 0 or step + 1 == config.steps:
                    logger.info("generator LoRA %s, project %s: step %d/%d, loss %.4f", engine, project_id, step + 1,
                                config.steps, loss.item())
            unet.eval()
            after = heldout_loss(objective, held, config.seed)
            state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
        finally:
            unet.eval()
            unet.delete_adapters([ADAPTER])
            for p in unet.parameters():
                p.requires_grad_(False)
        improved = after < before
        meta = {"engine": engine, "base": inpainter.model_id, "rank": config.rank, "steps": config.steps,
                "learning_rate": config.learning_rate, "size": config.size, "prompt_template":
                settings.generator_prompt_template, "train_pairs": len(train), "heldout_pairs": len(held),
                "heldout_loss_before": round(before, 6), "heldout_loss_after": round(after, 6),
                "activated": improved, "seconds": round(time.perf_counter() - started, 1), "time": time.time()}

        def write(folder):
            from diffusers import StableDiffusionInpaintPipeline

            StableDiffusionInpaintPipeline.save_lora_weights(folder, unet_lora_layers=state, weight_name=WEIGHTS)

        version = GeneratorVersions(settings.model_dir, project_id, engine).save(write, meta, activate=improved)
    report = {"project": int(project_id), **meta, "version": version.name, "skipped": skipped}
    logger.info("generator LoRA %s, project %s: %s (held-out loss %.4f -> %.4f)%s", engine, project_id,
                version.name, before, after, "" if improved else ", not activated: it did not improve")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend train-generator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--engine", choices=list(ENGINES), default=None, help="default: SYNTHESIS_ENGINE")
    parser.add_argument("--steps", type=int, help="default: GENERATOR_TRAIN_STEPS")
    parser.add_argument("--list", action="store_true", help="list the versions and their held-out losses")
    parser.add_argument("--activate", help="make a version (vN) or the base model (base) the one synthesis uses")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = get_settings()
    engine = args.engine or settings.synthesis_engine
    versions = GeneratorVersions(settings.model_dir, args.project, engine)
    if args.activate:
        versions.activate(None if args.activate == "base" else args.activate)
        print(json.dumps({"engine": engine, "active": args.activate}))
        return 0
    if args.list:
        active = versions.active()
        print(json.dumps({"engine": engine, "active": active.name if active else "base",
                          "versions": [v.meta for v in versions.list()]}, indent=2))
        return 0
    config = None
    if args.steps is not None:
        config = LoraTraining(rank=settings.generator_lora_rank, steps=args.steps,
                              learning_rate=settings.generator_learning_rate,
                              size=settings.generator_train_size or settings.synthesis_size)
    print(json.dumps(train_generator(args.project, engine, settings, config), indent=2))
    return 0
