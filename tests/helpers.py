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


def save_tiny_sam(engine: str, path: Path, seed: int = 0, regions_on: np.ndarray | None = None) -> Path:
    """Build a random-weight SAM of `engine`'s family at tiny size and save it as an official checkpoint (with
    `regions_on`: an image, whose clicks the model then answers with regions, see make_region_masks)."""
    from backend.segmentation.registry import build_sam

    torch.manual_seed(seed)
    model = build_sam(engine, TINY_ARCH[engine])
    if regions_on is not None:
        make_region_masks(model, regions_on)
    torch.save(model.state_dict(), path)
    return path


@torch.inference_mode()
def make_region_masks(sam, image: np.ndarray, clicks: int = 8) -> None:
    """Two changes to a random SAM that make its masks regions instead of pixel noise, at the same compute:
    each transposed-convolution kernel of the mask upscaler gets its four taps tied to one random value (untied
    random taps paint a 4-px checkerboard), and the hypernetwork output biases are shifted so that a click's
    mask logits centre on zero over `image` (else nearly all on). Fully random weights decode to ~100k runs per
    megapixel, where a real object mask has a few hundred: only region masks give a realistic RLE time, and a
    mask comparison (one runtime against another) that is not all boundary."""
    from backend.segmentation import compat

    compat.install()
    from segment_anything import SamPredictor

    decoder = sam.mask_decoder
    for index in (0, 3):
        weight = decoder.output_upscaling[index].weight
        weight.copy_(weight[:, :, :1, :1].expand_as(weight).clone())
    upscaled, hypers = [], []
    hooks = [decoder.output_upscaling.register_forward_hook(lambda m, i, out: upscaled.append(out.mean(dim=(0, 2, 3))))]
    hooks += [mlp.register_forward_hook(lambda m, i, out: hypers.append(out.reshape(-1, out.shape[-1])))
              for mlp in decoder.output_hypernetworks_mlps]
    predictor = SamPredictor(sam.eval())
    predictor.set_image(image)
    rng = np.random.default_rng(0)
    for _ in range(clicks):
        point = rng.uniform(0.1, 0.9, 2) * (image.shape[1], image.shape[0])
        predictor.predict(point_coords=point[None], point_labels=np.array([1]))
    for hook in hooks:
        hook.remove()
    mean_features = torch.stack(upscaled).mean(0)
    shift = float((torch.cat(hypers) @ mean_features).mean() / (mean_features @ mean_features))
    for mlp in decoder.output_hypernetworks_mlps:
        mlp.layers[2].bias.sub_(shift * mean_features)


def save_tiny_sam2(folder: Path, seed: int = 0) -> Path:
    """A random-weight SAM 2.1 (transformers Sam2Model) with a tiny Hiera, saved with save_pretrained."""
    from transformers import Sam2Config, Sam2Model
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    torch.manual_seed(seed)
    backbone = Sam2HieraDetConfig(hidden_size=16, num_attention_heads=1, blocks_per_stage=[1, 1, 2, 1],
                                  embed_dim_per_stage=[16, 32, 64, 128], num_attention_heads_per_stage=[1, 1, 1, 1],
                                  global_attention_blocks=[3])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16])
    Sam2Model(Sam2Config(vision_config=vision)).eval().save_pretrained(folder)
    return folder


def save_tiny_sam_hq(folder: Path, seed: int = 0) -> Path:
    """A random-weight SAM-HQ (transformers SamHQModel) with a 2-block ViT, saved with save_pretrained."""
    from transformers import SamHQConfig, SamHQModel

    torch.manual_seed(seed)
    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "global_attn_indexes": [1],
              "mlp_dim": 64, "initializer_range": 0.02}
    config = SamHQConfig(vision_config=vision, mask_decoder_config={"vit_dim": vision["hidden_size"]})
    SamHQModel(config).eval().save_pretrained(folder)
    return folder


def save_tiny_sam3(folder: Path, seed: int = 0) -> Path:
    """A random-weight SAM 3 (detector, tracker and tracker neck of transformers' Sam3VideoModel) at tiny size,
    saved as facebook/sam3 is laid out: a `sam3_video` config, one safetensors file of the model's own
    parameter names, and a tokenizer (an offline byte-level CLIP one)."""
    from safetensors.torch import save_file
    from transformers import Sam3VideoConfig, Sam3VideoModel

    tokenizer, vocab = offline_clip_tokenizer(32)
    vit = {"model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "image_size": 112, "patch_size": 14, "window_size": 4, "global_attn_indexes": [1],
           "pretrain_image_size": 56}
    vision = {"model_type": "sam3_vision_model", "backbone_config": vit, "fpn_hidden_size": 32,
              "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]]}
    text = {"model_type": "clip_text_model", "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
            "projection_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32,
            "bos_token_id": len(vocab) - 2, "eos_token_id": len(vocab) - 1, "pad_token_id": vocab["!"]}
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    detector = {"vision_config": vision, "text_config": text,
                "geometry_encoder_config": {**small, "num_layers": 1, "roi_size": 3},
                "detr_encoder_config": {**small, "num_layers": 1},
                "detr_decoder_config": {**small, "num_layers": 2, "num_queries": 20},
                "mask_decoder_config": {"hidden_size": 32, "num_attention_heads": 2}}
    tracker = {"image_size": 112, "vision_config": vision,
               "prompt_encoder_config": {"hidden_size": 32, "image_size": 112, "patch_size": 14},
               "mask_decoder_config": {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2,
                                       "iou_head_hidden_dim": 32}}
    torch.manual_seed(seed)
    config = Sam3VideoConfig(detector_config=detector, tracker_config=tracker)
    model = Sam3VideoModel(config).eval()
    with torch.no_grad():  # trained weights have other scales than initial ones; where a term stays ~0, leaving it
        tracker = model.tracker_model  # out would not show: give the tracker logits and high-res maps weight
        tracker.no_memory_embedding.normal_()
        for mlp in tracker.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(100.0)
        for conv in (tracker.mask_decoder.conv_s0, tracker.mask_decoder.conv_s1):
            conv.weight.mul_(50.0)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


TRANSFORMERS_FAMILIES = {"sam2": save_tiny_sam2, "sam_hq": save_tiny_sam_hq}


def load_through_hub_cache(engine: str, tmp_path: Path, repo_id: str | None = None, folder: Path | None = None,
                           **env: str):
    """`load_segmenter` of SAM_ENGINE=`engine` without SAM_CHECKPOINT (its default hub id), in a subprocess with
    HF_HUB_OFFLINE=1 and a hub cache in `tmp_path` that holds `folder` as a download of `repo_id` would leave it
    (nothing when `folder` is None). Prints the fingerprint and the model version; returns the finished process."""
    import os
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "hub"
    if folder is not None:
        snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
        shutil.copytree(folder, snapshot)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    code = ("from backend.core.settings import get_settings; from backend.core.versions import model_version;"
            "from backend.segmentation.registry import load_segmenter;"
            "s = get_settings(); print(load_segmenter(s).fingerprint, model_version(s))")
    environment = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "SAM_ENGINE": engine,
                   "MODEL_DIR": str(tmp_path / "models"), **env}
    if "SAM_CHECKPOINT" not in env:
        environment.pop("SAM_CHECKPOINT", None)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)


def sam_env(engine: str, checkpoint: Path) -> dict[str, str]:
    return {
        "SAM_ENGINE": engine,
        "SAM_CHECKPOINT": str(checkpoint),
        "SAM_ARCH_OVERRIDES": json.dumps(TINY_ARCH.get(engine, {})),
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


def disk_grid(side: int = 320, cells: int = 4, seed: int = 0) -> np.ndarray:
    """A square image with red disks centred on the corners of a cells x cells grid: whichever of its prior
    boxes the tiny OWLv2 (boxes = one grid cell around each corner) picks holds one object."""
    rng = np.random.default_rng(seed)
    image = rng.normal(110, 12, (side, side, 3)).clip(0, 255).astype(np.uint8)
    image[..., 1] = np.clip(image[..., 1].astype(int) + 40, 0, 255)
    yy, xx = np.mgrid[:side, :side]
    cell = side / cells
    for row in range(1, cells + 1):  # OWLv2's prior boxes are centred on the grid's corners k * cell
        for col in range(1, cells + 1):
            inside = (xx - col * cell) ** 2 + (yy - row * cell) ** 2 <= (0.3 * cell) ** 2
            image[inside] = (rng.normal(0, 8, (inside.sum(), 3)) + (210, 40, 40)).clip(0, 255).astype(np.uint8)
    return image


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


def _tiny_dinov2():
    """The DINOv2 backbone of the tiny depth models: 4 blocks of width 32, 70 px input."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                        patch_size=14, image_size=70, out_features=["stage1", "stage2", "stage3", "stage4"],
                        reshape_hidden_states=False)


def save_tiny_depth_anything(folder: Path, metric: bool = False) -> Path:
    """A random-weight Depth Anything (DINOv2 backbone + DPT head) at tiny size, saved with save_pretrained."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    backbone = _tiny_dinov2()
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                 depth_estimation_type="metric" if metric else "relative", max_depth=20)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 70, "width": 70}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(folder)
    return folder


def save_tiny_prompt_depth_anything(folder: Path) -> Path:
    """A random-weight Prompt Depth Anything (DINOv2 backbone, DPT head with prompt-depth fusion) at tiny size,
    saved with save_pretrained with its (PIL) image processor."""
    from transformers import PromptDepthAnythingConfig, PromptDepthAnythingForDepthEstimation
    from transformers.models.prompt_depth_anything.image_processing_pil_prompt_depth_anything import (
        PromptDepthAnythingImageProcessorPil,
    )

    torch.manual_seed(0)
    backbone = _tiny_dinov2()
    config = PromptDepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                       neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                       depth_estimation_type="metric", max_depth=20)
    PromptDepthAnythingForDepthEstimation(config).save_pretrained(folder)
    PromptDepthAnythingImageProcessorPil(size={"height": 70, "width": 70}, keep_aspect_ratio=True,
                                         ensure_multiple_of=14).save_pretrained(folder)
    return folder


def save_tiny_owlv2(folder: Path) -> Path:
    """A random-weight OWLv2 detector with an offline byte-level CLIP tokenizer, saved with save_pretrained."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(0)
    tokenizer, vocab = offline_clip_tokenizer(16)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "vocab_size": len(vocab), "max_position_embeddings": 16, "bos_token_id": len(vocab) - 2,
            "eos_token_id": len(vocab) - 1, "pad_token_id": vocab["!"]}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 16}
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():  # boxes = exactly the model's per-patch prior boxes: one grid cell each
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_omdet_turbo(folder: Path) -> Path:
    """A random-weight OmDet-Turbo in the hub's layout: transformers' timm Swin-T backbone config (the only
    full-size part: timm has no smaller Swin) at 224 px, tiny CLIP text tower, encoder and decoder; the processor
    (DETR image processor + offline CLIP tokenizer, 77 tokens as the processor pads) saved beside it. As in the
    real model, text width = class embedding > encoder / decoder width (transformers needs its task projection)."""
    from transformers import DetrImageProcessorPil, OmDetTurboConfig, OmDetTurboForObjectDetection
    from transformers.models.omdet_turbo.processing_omdet_turbo import OmDetTurboProcessor

    from backend.segmentation.compat import provide_timm

    provide_timm()
    torch.manual_seed(0)
    tokenizer, vocab = offline_clip_tokenizer(77)
    text = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": len(vocab), "max_position_embeddings": 77, "bos_token_id": len(vocab) - 2,
            "eos_token_id": len(vocab) - 1, "pad_token_id": vocab["!"]}
    config = OmDetTurboConfig(
        text_config=text, image_size=224, text_projection_in_dim=64, text_projection_out_dim=64, class_embed_dim=64,
        task_encoder_hidden_dim=64, encoder_hidden_dim=32, vision_features_channels=[32, 32, 32],
        encoder_dim_feedforward=64, encoder_attention_heads=2, decoder_hidden_dim=32, decoder_num_heads=2,
        decoder_num_layers=1, decoder_dim_feedforward=64, num_queries=20)
    OmDetTurboForObjectDetection(config).save_pretrained(folder)
    image_processor = DetrImageProcessorPil(size={"height": 224, "width": 224}, do_pad=False)
    OmDetTurboProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def offline_clip_tokenizer(max_length: int):
    """A working byte-level CLIPTokenizer made without downloads: the 256 byte characters (and their
    end-of-word forms) plus the two special tokens, no merges. Returns (tokenizer, vocab)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length, pad_token="!"), vocab


def _tiny_clip_text(vocab: dict, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1, pad_token_id=vocab["!"],
                            hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=77)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def save_tiny_inpainting(folder: Path) -> dict[str, Path]:
    """Random-weight Stable Diffusion 2 inpainting and Kandinsky 2.2 prior + inpaint pipelines at tiny size,
    saved with save_pretrained. Returns the folders by setting name."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        KandinskyV22InpaintPipeline,
        KandinskyV22PriorPipeline,
        PNDMScheduler,
        PriorTransformer,
        StableDiffusionInpaintPipeline,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tokenizer, vocab = offline_clip_tokenizer(77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=9,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], sample_size=64)
    sd = StableDiffusionInpaintPipeline(vae=vae, text_encoder=_tiny_clip_text(vocab, False), tokenizer=tokenizer,
                                        unet=unet, scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
                                        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(folder / "sd2")

    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, image_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
        num_channels=3, num_hidden_layers=2, patch_size=8))
    KandinskyV22PriorPipeline(
        prior=prior, image_encoder=image_encoder, text_encoder=_tiny_clip_text(vocab, True), tokenizer=tokenizer,
        scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
                                  clip_sample=True, clip_sample_range=10.0),
        image_processor=CLIPImageProcessor(crop_size=32, size=32)).save_pretrained(folder / "kandinsky-prior")
    decoder_unet = UNet2DConditionModel(
        in_channels=9, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=32, encoder_hid_dim_type="image_proj", cross_attention_dim=32, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None)
    movq = VQModel(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                   in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
                   num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
                   vq_embed_dim=4)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    KandinskyV22InpaintPipeline(unet=decoder_unet, scheduler=scheduler, movq=movq).save_pretrained(
        folder / "kandinsky-inpaint")
    return {"SD_INPAINT_MODEL": folder / "sd2", "KANDINSKY_PRIOR_MODEL": folder / "kandinsky-prior",
            "KANDINSKY_INPAINT_MODEL": folder / "kandinsky-inpaint"}


def save_tiny_grounding_dino(folder: Path) -> Path:
    """A random-weight Grounding DINO (Swin backbone, BERT text encoder) at tiny size, with an offline word
    vocabulary, saved with save_pretrained."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "disk", "background", "object", "person", "vehicle"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    backbone = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                                 encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10, num_feature_levels=4,
                                 encoder_n_points=2, decoder_n_points=2, max_text_len=32)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
                           tokenizer=BertTokenizer(str(folder / "vocab.txt"))).save_pretrained(folder)
    return folder
