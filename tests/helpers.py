"""Test material made on the spot: tiny random-weight SAM checkpoints, synthetic images, LS payloads."""

from __future__ import annotations

import base64
import io
import json
import socket
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Tiny sizes of the two real architecture families (same code, a few hundred thousand encoder weights).
TINY_ARCH = {
    "vit_b": {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": []},
    "vit_t": {"embed_dims": [16, 32, 32, 320], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 2],
              "window_sizes": [7, 7, 14, 7]},
}

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Disk" background="#FF0000"/>
    <Label value="Background" background="#0000FF"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Disk" smart="true"/>
    <Label value="Background" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="Disk" smart="true"/>
    <Label value="Background" smart="true"/>
  </RectangleLabels>
</View>"""

POLYGON_CONFIG = LABEL_CONFIG.replace("BrushLabels", "PolygonLabels")


def save_tiny_sam(engine: str, path: Path, seed: int = 0) -> Path:
    """Build a random-weight SAM of `engine`'s family at tiny size and save it as an official checkpoint."""
    from backend.engines import build_sam

    torch.manual_seed(seed)
    model = build_sam(engine, TINY_ARCH[engine])
    torch.save(model.state_dict(), path)
    return path


def sam_env(engine: str, checkpoint: Path) -> dict[str, str]:
    return {
        "SAM_ENGINE": engine,
        "SAM_CHECKPOINT": str(checkpoint),
        "SAM_ARCH_OVERRIDES": json.dumps(TINY_ARCH[engine]),
        "SAM_DOWNLOAD": "false",
    }


def disk_image(width: int = 320, height: int = 240, center=(0.4, 0.5), radius: float = 0.25, seed: int = 0):
    """An RGB image of a red disk on a noisy green-grey background, and the disk's mask."""
    rng = np.random.default_rng(seed)
    image = (rng.normal(110, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
    image[..., 1] = np.clip(image[..., 1].astype(int) + 40, 0, 255)
    yy, xx = np.mgrid[:height, :width]
    cx, cy, r = center[0] * width, center[1] * height, radius * min(width, height)
    mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    image[mask] = (rng.normal(0, 8, (mask.sum(), 3)) + (210, 40, 40)).clip(0, 255).astype(np.uint8)
    return image, mask


def encode_image(image: np.ndarray, fmt: str = "PNG", exif_orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    pil = Image.fromarray(image)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        pil.save(buffer, format=fmt, exif=exif)
    else:
        pil.save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def keypoint(x: float, y: float, label: str = "Disk", positive: bool = True, width=320, height=240) -> dict:
    """A smart KeyPointLabels context item at percent (x, y)."""
    return {
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
        "is_positive": positive, "id": "kp1", "from_name": "kp", "to_name": "image",
        "type": "keypointlabels", "origin": "manual",
    }


def rectangle(x: float, y: float, w: float, h: float, label: str = "Disk", width=320, height=240) -> dict:
    return {
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
        "id": "r1", "from_name": "rect", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
    }


def predict_body(image_url: str, items: list[dict] | None, config: str = LABEL_CONFIG, task_id: int = 1) -> dict:
    params = {"login": None, "password": None}
    if items is not None:
        params["context"] = {"result": items}
    return {"tasks": [{"id": task_id, "data": {"image": image_url}}], "project": "1.1700000000",
            "label_config": config, "params": params}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def save_tiny_depth_anything(folder: Path, metric: bool = False) -> Path:
    """A random-weight Depth Anything (DINOv2 backbone + DPT head) at tiny size, saved with save_pretrained."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=70, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                 depth_estimation_type="metric" if metric else "relative", max_depth=20)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 70, "width": 70}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(folder)
    return folder


def save_tiny_owlv2(folder: Path) -> Path:
    """A random-weight OWLv2 detector with an offline byte-level CLIP tokenizer, saved with save_pretrained."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    chars = list(bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16, pad_token="!")
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "vocab_size": len(vocab), "max_position_embeddings": 16, "bos_token_id": len(vocab) - 2,
            "eos_token_id": len(vocab) - 1, "pad_token_id": vocab["!"]}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 16}
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():  # boxes = the model's per-patch prior boxes (random box heads saturate to zero size)
        model.box_head.dense2.weight.mul_(0.01)
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=tokenizer).save_pretrained(folder)
    return folder
