"""Diffusion inpainting engines (diffusers): Stable Diffusion 2 inpainting, Kandinsky 2.2 prior + inpaint.

`inpaint(image, mask, ...)` works at any image size: it crops a square around the region (with
context), runs the pipeline at SYNTHESIS_SIZE, and pastes the result back through a feathered mask,
so pixels outside the (dilated) region keep the original exactly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from backend.core.errors import InputError
from backend.core.model_cache import ModelCache
from backend.core.pretrained import from_pretrained, resolve_device
from backend.core.settings import Settings
from backend.segmentation.masks import bounding_box

ENGINES = ("sd2", "kandinsky")


@dataclass(frozen=True)
class InpaintRequest:
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    size: int  # the pipeline's working resolution (square)


def _load(kind: str, name: str, setting: str, hub_id: str):
    import diffusers

    return from_pretrained(getattr(diffusers, kind).from_pretrained, name, kind, setting, hub_id)


class Inpainter:
    """What both engines share: a lock (one generation or LoRA training at a time on the shared pipeline), the
    UNet a domain LoRA adapts, and the names of the LoRA adapters loaded into it."""

    name = ""
    model_id = ""

    def __init__(self):
        self.lock = threading.RLock()
        self.adapters: set[str] = set()

    @property
    def unet(self):
        raise NotImplementedError

    @property
    def scheduler(self):
        raise NotImplementedError

    def load_lora(self, folder: Path, adapter: str) -> None:
        """Load a LoRA saved in diffusers' format (pytorch_lora_weights.safetensors) as adapter `adapter`."""
        self.unet.load_lora_adapter(str(folder), prefix="unet", adapter_name=adapter,
                                    weight_name="pytorch_lora_weights.safetensors")


class StableDiffusionInpainter(Inpainter):
    name = "sd2"

    def __init__(self, settings: Settings):
        super().__init__()
        self.model_id = settings.sd_inpaint_model
        self.pipe = _load("StableDiffusionInpaintPipeline", settings.sd_inpaint_model, "SD_INPAINT_MODEL",
                          "sd2-community/stable-diffusion-2-inpainting").to(resolve_device(settings.device))
        self.pipe.set_progress_bar_config(disable=True)
        if getattr(self.pipe, "safety_checker", None) is not None:
            self.pipe.safety_checker = None  # the team reviews every sample; no silent black images

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def scheduler(self):
        return self.pipe.scheduler

    def load_lora(self, folder: Path, adapter: str) -> None:
        self.pipe.load_lora_weights(str(folder), adapter_name=adapter)  # the pipeline's own LoRA loader

    def __call__(self, image: Image.Image, mask: Image.Image, request: InpaintRequest) -> Image.Image:
        import torch

        generator = torch.Generator("cpu").manual_seed(request.seed)
        return self.pipe(prompt=request.prompt, negative_prompt=request.negative_prompt or None, image=image,
                         mask_image=mask, height=request.size, width=request.size,
                         num_inference_steps=request.steps, guidance_scale=request.guidance,
                         generator=generator).images[0]


class KandinskyInpainter(Inpainter):
    """Kandinsky 2.2: its decoder pipeline has no LoRA loader of its own; the LoRA goes into its UNet."""

    name = "kandinsky"

    def __init__(self, settings: Settings):
        super().__init__()
        self.model_id = settings.kandinsky_inpaint_model
        device = resolve_device(settings.device)
        self.prior = _load("KandinskyV22PriorPipeline", settings.kandinsky_prior_model, "KANDINSKY_PRIOR_MODEL",
                           "kandinsky-community/kandinsky-2-2-prior").to(device)
        self.decoder = _load("KandinskyV22InpaintPipeline", settings.kandinsky_inpaint_model,
                             "KANDINSKY_INPAINT_MODEL", "kandinsky-community/kandinsky-2-2-decoder-inpaint").to(device)
        for pipe in (self.prior, self.decoder):
            pipe.set_progress_bar_config(disable=True)

    @property
    def unet(self):
        return self.decoder.unet

    @property
    def scheduler(self):
        return self.decoder.scheduler

    def __call__(self, image: Image.Image, mask: Image.Image, request: InpaintRequest) -> Image.Image:
        import torch

        generator = torch.Generator("cpu").manual_seed(request.seed)
        embeds = self.prior(request.prompt, negative_prompt=request.negative_prompt or "", generator=generator,
                            num_inference_steps=max(2, request.steps // 2))
        return self.decoder(image=image, mask_image=np.asarray(mask, np.float32) / 255.0,
                            image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                            height=request.size, width=request.size, num_inference_steps=request.steps,
                            guidance_scale=request.guidance, generator=generator).images[0]


def _load_inpainter(engine: str, settings: Settings):
    return (StableDiffusionInpainter if engine == "sd2" else KandinskyInpainter)(settings)


_inpainters: ModelCache = ModelCache(_load_inpainter, keep=2)


def get_inpainter(engine: str, settings: Settings):
    if engine not in ENGINES:
        raise InputError(f"unknown inpainting engine {engine!r}; use one of {list(ENGINES)}", "engine")
    return _inpainters.get(engine, settings)


def use_generator(inpainter: Inpainter, project_id: int | str | None, settings: Settings) -> str | None:
    """Set the pipeline to the project's active domain LoRA (loaded once per version), or to the base model
    (adapters disabled: the base output, byte for byte). Returns the version name (None: base). Call it and
    generate under `inpainter.lock`."""
    from backend.synthesis.generator_versions import GeneratorVersions

    active = None
    if project_id is not None and str(project_id).isdigit():
        active = GeneratorVersions(settings.model_dir, project_id, inpainter.name).active()
    if active is None:
        if inpainter.adapters:
            inpainter.unet.disable_adapters()
        return None
    adapter = f"project{project_id}_{active.name}"
    if adapter not in inpainter.adapters:
        inpainter.load_lora(active.folder, adapter)
        inpainter.adapters.add(adapter)
    inpainter.unet.enable_adapters()
    inpainter.unet.set_adapters([adapter])
    return active.name


def region_crop(mask: np.ndarray, context: float = 0.5) -> tuple[int, int, int]:
    """A square (x, y, side) around the region with `context` of its size on each side, inside the image."""
    height, width = mask.shape
    x0, y0, x1, y1 = bounding_box(mask)
    side = int(max(x1 - x0, y1 - y0) * (1 + 2 * context))
    side = max(64, min(side, height, width))
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    x = int(np.clip(cx - side // 2, 0, width - side))
    y = int(np.clip(cy - side // 2, 0, height - side))
    return x, y, side


def soft_region(mask: np.ndarray, dilate: int, feather: int) -> tuple[np.ndarray, np.ndarray]:
    """(dilated binary region the model repaints, 0..1 alpha for pasting back: 1 on the object, fading out
    over about `feather` pixels around the dilated region, 0 further out)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
    dilated = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    alpha = dilated.astype(np.float32)
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather)
    alpha[mask.astype(bool)] = 1.0
    return dilated, np.clip(alpha, 0.0, 1.0)


def inpaint(image: np.ndarray, mask: np.ndarray, inpainter, request: InpaintRequest,
            dilate: int, feather: int) -> tuple[np.ndarray, np.ndarray]:
    """The image with the region repainted (original resolution), and the dilated region that changed."""
    if not mask.any():
        raise InputError("the region to inpaint is empty", "annotation")
    region, alpha = soft_region(mask, dilate, feather)
    x, y, side = region_crop(region)
    crop = image[y:y + side, x:x + side]
    crop_region = region[y:y + side, x:x + side]
    small = Image.fromarray(crop).resize((request.size, request.size), Image.LANCZOS)
    small_mask = Image.fromarray(crop_region.astype(np.uint8) * 255).resize((request.size, request.size),
                                                                             Image.NEAREST)
    painted = inpainter(small, small_mask, request).convert("RGB").resize((side, side), Image.LANCZOS)
    result = image.astype(np.float32).copy()
    a = alpha[y:y + side, x:x + side, None]
    result[y:y + side, x:x + side] = a * np.asarray(painted, np.float32) + (1 - a) * crop.astype(np.float32)
    return np.clip(np.round(result), 0, 255).astype(np.uint8), region
