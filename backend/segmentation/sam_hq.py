"""SAM-HQ (transformers' SamHQModel, ViT-B / L / H) as a Segmenter.

Preprocessing is SAM's: the long side scaled to 1024, normalized, padded at the bottom right. The embedding
is SAM's image features plus the early ViT features HQ-SAM's decoder fuses for fine structures; masks are
the sum of SAM's mask and the HQ token's mask (transformers' default, `hq_token_only=False`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backend.core.errors import ImageError
from backend.core.pretrained import resolve_device
from backend.core.settings import Settings
from backend.segmentation import compat, sam_hq_decoder
from backend.segmentation.hf_sam import TransformersSegmenter, load_pretrained
from backend.segmentation.masks import padded_low_res_target
from backend.segmentation.sam2 import imagenet_normalized
from backend.segmentation.segmenter import Embedding

compat.install()

from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402


class SamHQSegmenter(TransformersSegmenter):
    family = "sam_hq"
    encoder_outputs = ("features", "vit_early")
    hq_token_only = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.side = int(self.model.prompt_encoder.input_image_size)
        self.transform = ResizeLongestSide(self.side)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        height, width = image.shape[:2]
        if min(self.transform.get_preprocess_shape(height, width, self.side)) < 1:
            raise ImageError(f"a {width}x{height} image is too thin for SAM-HQ: its short side would vanish when "
                             f"the long side is scaled to {self.side} px", "image")
        resized = self.transform.apply_image(image)
        normalized = imagenet_normalized(resized)
        padded = np.zeros((self.side, self.side, 3), np.float32)
        padded[: resized.shape[0], : resized.shape[1]] = normalized
        return torch.from_numpy(padded).permute(2, 0, 1).contiguous()[None], resized.shape[:2]

    def encode(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        features, intermediate = self.model.get_image_embeddings(pixel_values)
        return {"features": features, "vit_early": intermediate[0]}  # the decoder fuses the first global block

    def to_model_frame(self, coords: np.ndarray, embedding: Embedding) -> np.ndarray:
        return self.transform.apply_coords(coords, embedding.original_size).astype(np.float32)

    def _tensors_of(self, embedding: Embedding) -> dict[str, torch.Tensor]:
        tensors = super()._tensors_of(embedding)
        if not torch.is_grad_enabled():  # serving: the prompt-independent HQ features, once per image
            tensors["hq"] = sam_hq_decoder.hq_features(self.decoder, tensors["features"], tensors["vit_early"])
        return tensors

    def run_decoder(self, decoder, arrays, sparse, dense, multimask: bool):
        if decoder is self.decoder and "hq" in arrays:
            return sam_hq_decoder.decode(decoder, arrays["hq"], arrays["features"], self.image_pe, sparse, dense,
                                         multimask, self.hq_token_only)
        return decoder(
            image_embeddings=arrays["features"], image_positional_embeddings=self.image_pe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            hq_token_only=self.hq_token_only, intermediate_embeddings=[arrays["vit_early"]])

    def upscale(self, logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        height, width = embedding.input_size
        frame = F.interpolate(logits, (self.side, self.side), mode="bilinear", align_corners=False)
        return F.interpolate(frame[..., :height, :width], embedding.original_size, mode="bilinear",
                             align_corners=False)

    def logits_target(self, mask: np.ndarray, embedding: Embedding) -> torch.Tensor:
        return torch.from_numpy(padded_low_res_target(mask, embedding.input_size, self.side))


def load_sam_hq(settings: Settings) -> SamHQSegmenter:
    from transformers import SamHQModel

    model = load_pretrained(settings, SamHQModel)
    segmenter = SamHQSegmenter(model, settings.sam_engine, resolve_device(settings.device),
                               float16_features=settings.embedding_float16)
    segmenter.use_encoder_runtime(settings.encoder_runtime, Path(settings.model_dir) / "onnx")
    return segmenter
