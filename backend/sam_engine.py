"""Segment Anything (SAM ViT-H/L/B, MobileSAM) as a stateless, thread-safe Segmenter."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from . import compat
from .prompts import Prompt
from .segmenter import Embedding, MaskResult

compat.install()

from segment_anything.modeling import Sam  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402


def weights_fingerprint(module: torch.nn.Module, samples: int = 4096) -> str:
    """A short hash of a module's weights (a strided sample of every tensor: fast even for ViT-H)."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class SamSegmenter:
    """Embeds with the image encoder; decodes with the prompt encoder + mask decoder.

    Unlike `SamPredictor` it keeps no per-image state, so one instance serves concurrent requests and
    embeddings can live in a shared cache. For a single click it asks for SAM's three candidate masks
    and keeps the best-scored one (the ambiguity rule of the SAM paper); only that one is upscaled.
    """

    def __init__(self, model: Sam, name: str, device: torch.device):
        self.model = model.to(device).eval()
        self.name = name
        self.device = device
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.fingerprint = f"{name}-{weights_fingerprint(model.image_encoder)}"

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        resized = self.transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        features = self.model.image_encoder(self.model.preprocess(pixels.float()))
        return Embedding(
            features=features.cpu().numpy(),
            original_size=(int(image.shape[0]), int(image.shape[1])),
            input_size=(int(resized.shape[0]), int(resized.shape[1])),
        )

    def _prompt_tensors(self, embedding: Embedding, prompt: Prompt):
        points = boxes = None
        if len(prompt.points):
            coords = self.transform.apply_coords(prompt.points.astype(np.float32), embedding.original_size)
            points = (
                torch.as_tensor(coords, dtype=torch.float, device=self.device)[None],
                torch.as_tensor(prompt.labels, dtype=torch.int, device=self.device)[None],
            )
        if prompt.box is not None:
            box = self.transform.apply_boxes(prompt.box[None].astype(np.float32), embedding.original_size)
            boxes = torch.as_tensor(box, dtype=torch.float, device=self.device)
        return points, boxes

    @torch.inference_mode()
    def decode(self, embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None) -> MaskResult:
        points, boxes = self._prompt_tensors(embedding, prompt)
        masks = None
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        low_res, scores = self.model.mask_decoder(
            image_embeddings=torch.from_numpy(embedding.features).to(self.device),
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=prompt.is_single_click and mask_input is None,
        )
        best = int(torch.argmax(scores[0]))
        chosen = low_res[:, best : best + 1]
        upscaled = self.model.postprocess_masks(chosen, embedding.input_size, embedding.original_size)
        mask = (upscaled[0, 0] > self.model.mask_threshold).cpu().numpy()
        return MaskResult(mask=mask, score=float(scores[0, best]), low_res_logits=chosen[0].cpu().numpy())
