"""Seconds per 512 px inpainting sample for the real-size Stable Diffusion 2 inpainting UNet (random weights).

    ./run bench inpaint_speed [--steps 30] [--samples 1]

The UNet (865 M parameters) and VAE have the architecture of stabilityai/stable-diffusion-2-inpainting;
the text encoder is a small stand-in (it runs once per sample, the UNet 2 x steps times with
classifier-free guidance). Baseline in the same run: one UNet forward at batch 2 (one denoising step).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, print_table, seconds_row

assert ROOT.is_dir()
from tests.helpers import _tiny_clip_text, offline_clip_tokenizer  # noqa: E402


def sd2_inpainting(folder: Path) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    tokenizer, vocab = offline_clip_tokenizer(77)
    small = _tiny_clip_text(vocab, False).config.to_dict()
    text = CLIPTextModel(CLIPTextConfig(**{**small, "hidden_size": 1024, "num_attention_heads": 16,
                                           "intermediate_size": 1024, "num_hidden_layers": 2}))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--samples", type=int, default=1)
    args = parser.parse_args()
    from backend.core.settings import Settings
    from backend.synthesis.inpainting import InpaintRequest, StableDiffusionInpainter

    with tempfile.TemporaryDirectory() as tmp:
        folder = sd2_inpainting(Path(tmp) / "sd2")
        engine = StableDiffusionInpainter(Settings(sd_inpaint_model=str(folder)))
        unet = engine.pipe.unet
        params = sum(p.numel() for p in unet.parameters()) / 1e6
        latents = torch.randn(2, 9, 64, 64)
        hidden = torch.randn(2, 77, 1024)
        step_times = []
        with torch.inference_mode():
            for _ in range(3):
                started = time.perf_counter()
                unet(latents, 500, encoder_hidden_states=hidden)
                step_times.append(time.perf_counter() - started)
        from PIL import Image

        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8))
        mask = np.zeros((512, 512), np.uint8)
        mask[128:384, 160:352] = 255
        sample_times = []
        for index in range(args.samples):
            started = time.perf_counter()
            engine(image, Image.fromarray(mask), InpaintRequest("yellow block of wood", "snow road", index,
                                                                 args.steps, 7.5, 512))
            sample_times.append(time.perf_counter() - started)
        print(f"SD2 inpainting UNet ({params:.0f} M parameters), 512x512, {args.steps} steps, guidance 7.5, "
              f"torch threads {torch.get_num_threads()}, fp32 CPU")
        baseline = seconds_row("one UNet step, batch 2 (baseline)", step_times)
        sample = seconds_row(f"one sample ({args.steps} steps + VAE)", sample_times, float(np.median(step_times)),
                             digits=1)
        print_table([baseline, sample], ["what", "median s", "p95 s", "ratio"])
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
