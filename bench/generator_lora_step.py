"""Seconds per domain-LoRA training step of the real-size inpainting UNets (random weights), and peak memory.

    ./run bench generator_lora_step [--steps 2]

UNets with the architectures of the SD2-inpainting UNet (865 M parameters) and the Kandinsky 2.2
decoder-inpaint UNet, at 512 px (64x64 latents), batch 1, LoRA rank 4 and 16 on the modules
backend/synthesis/lora.py adapts, AdamW on the LoRA weights only: one forward, backward and optimizer
step of the denoising loss. Baseline in the same process: one inference forward of the UNet. Each
row runs in its own process, so its peak RSS is its own. (The VAE / MoVQ encoding of the pair, done
once per step without gradients, is not included: it is a fraction of a UNet forward.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from common import ROOT, print_table, seconds_row

ENGINES = ("sd2", "kandinsky")
RANKS = (4, 16)


def build_unet(engine: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if engine == "sd2":  # stabilityai/stable-diffusion-2-inpainting's unet/config.json
        return UNet2DConditionModel(
            sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    # kandinsky-community/kandinsky-2-2-decoder-inpaint's unet/config.json
    return UNet2DConditionModel(
        sample_size=96, in_channels=9, out_channels=8, layers_per_block=3, block_out_channels=(384, 768, 1152, 1536),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                          "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                        "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=64, cross_attention_dim=768,
        encoder_hid_dim=1280, encoder_hid_dim_type="image_proj", addition_embed_type="image",
        resnet_time_scale_shift="scale_shift", class_embed_type=None)


def conditions(engine: str) -> dict:
    if engine == "sd2":
        return {"encoder_hidden_states": torch.randn(1, 77, 1024)}
    return {"encoder_hidden_states": None, "added_cond_kwargs": {"image_embeds": torch.randn(1, 1280)}}


def measure(engine: str, rank: int, steps: int) -> dict:
    """In a fresh process: one inference forward (baseline), then LoRA training steps."""
    sys.path.insert(0, str(ROOT))
    from peft import LoraConfig

    from backend.synthesis.lora import TARGET_MODULES

    unet = build_unet(engine).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    sample, cond = torch.randn(1, 9, 64, 64), conditions(engine)
    with torch.inference_mode():
        started = time.perf_counter()
        unet(sample, 500, **cond)
        forward = time.perf_counter() - started
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES))
    lora = [p for name, p in unet.named_parameters() if "lora_" in name]
    for p in lora:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(lora, lr=1e-4)
    unet.train()
    seconds = []
    for _ in range(steps + 1):  # the first is a warm-up
        started = time.perf_counter()
        prediction = unet(sample, torch.tensor([500]), return_dict=False, **cond)[0][:, :4]
        loss = torch.nn.functional.mse_loss(prediction, torch.randn_like(prediction))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return {"params_m": params, "lora_m": sum(p.numel() for p in lora) / 1e6, "forward": forward,
            "steps": seconds[1:], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # internal: ENGINE RANK in its own process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.steps)))
        return
    rows = []
    for engine in ENGINES:
        for rank in RANKS:
            done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--measure", engine,
                                   str(rank)], cwd=ROOT / "bench", capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(done.stderr[-2000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            name = f"{engine} UNet {result['params_m']:.0f} M, LoRA rank {rank} ({result['lora_m']:.2f} M)"
            rows.append({**seconds_row(f"{name}: inference forward (baseline)", [result["forward"]]),
                         "peak MiB": ""})
            rows.append({**seconds_row(f"{name}: training step", result["steps"], result["forward"]),
                         "peak MiB": round(result["peak_rss_mb"])})
    print(f"domain LoRA training step, 512 px (64x64 latents), batch 1, fp32 CPU, torch threads "
          f"{torch.get_num_threads()}, {args.steps} measured steps per row after a warm-up")
    print_table(rows, ["what", "median s", "p95 s", "ratio", "peak MiB"])


if __name__ == "__main__":
    main()
