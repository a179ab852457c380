"""SAM 2.1 (transformers' Sam2Model, Hiera tiny / small / base-plus / large) as a Segmenter.

The image is stretched to the model's square input (as Sam2Processor does, no padding); the embedding is
the image features plus the two high-resolution feature maps SAM 2's decoder upsamples with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend.core.errors import ImageError
from backend.core.pretrained import resolve_device
from backend.core.settings import Settings
from backend.segmentation.hf_sam import TransformersSegmenter, load_pretrained
from backend.segmentation.segmenter import Embedding

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def imagenet_normalized(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB (HxWx3) scaled to 0..1 and normalized with ImageNet's mean and std, float32."""
    return (pixels.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


class Sam2Segmenter(TransformersSegmenter):
    family = "sam2"
    encoder_outputs = ("features", "high_res_s0", "high_res_s1")
    # bench encoder_runtime: Hiera tiny on ONNX Runtime (constant folding off) is no faster than eager, and
    # OpenVINO's bfloat16 changed its masks (IoU 0.87): auto keeps it eager
    auto_runtimes = ()

    @property
    def side(self) -> int:
        return int(self.model.prompt_encoder.input_image_size)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        if min(image.shape[:2]) < 1:
            raise ImageError("the image has no pixels", "image")
        resized = np.asarray(Image.fromarray(image).resize((self.side, self.side), Image.BILINEAR))
        return torch.from_numpy(self.normalize(resized)).permute(2, 0, 1).contiguous()[None], (self.side, self.side)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """The resized uint8 RGB image as the model's float32 input (Sam2Processor: ImageNet mean and std)."""
        return imagenet_normalized(pixels)

    def encode(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        high_res_s0, high_res_s1, features = self.model.get_image_embeddings(pixel_values)
        return {"features": features, "high_res_s0": high_res_s0, "high_res_s1": high_res_s1}

    def to_model_frame(self, coords: np.ndarray, embedding: Embedding) -> np.ndarray:
        height, width = embedding.original_size
        return coords * np.array([self.side / width, self.side / height], np.float32)

    def run_decoder(self, decoder, arrays, sparse, dense, multimask: bool):
        logits, scores, _, _ = decoder(
            image_embeddings=arrays["features"], image_positional_embeddings=self.image_pe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            high_resolution_features=[arrays["high_res_s0"], arrays["high_res_s1"]])
        return logits, scores

    def upscale(self, logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        return F.interpolate(logits, embedding.original_size, mode="bilinear", align_corners=False)

    def logits_target(self, mask: np.ndarray, embedding: Embedding) -> torch.Tensor:
        import cv2

        side = int(self.model.prompt_encoder.mask_input_size[0])  # the decoder's low-res output side
        return torch.from_numpy(cv2.resize(mask.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA))

    def trainable_decoder(self) -> torch.nn.Module:
        decoder = super().trainable_decoder()
        for frozen in (decoder.conv_s0, decoder.conv_s1):  # applied at embedding time: cached maps stay valid
            frozen.requires_grad_(False)
        return decoder


def load_sam2(settings: Settings) -> Sam2Segmenter:
    from transformers import Sam2Model

    model = load_pretrained(settings, Sam2Model)
    segmenter = Sam2Segmenter(model, settings.sam_engine, resolve_device(settings.device),
                              float16_features=settings.embedding_float16)
    segmenter.use_encoder_runtime(settings.encoder_runtime, Path(settings.model_dir) / "onnx")
    return segmenter
