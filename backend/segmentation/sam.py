"""Segment Anything (SAM ViT-H/L/B, MobileSAM) as a stateless, thread-safe Segmenter."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import torch

from backend.core.errors import ImageError
from backend.segmentation import compat
from backend.segmentation.fast_decoder import FastMaskDecoder, ImageContext
from backend.segmentation.masks import padded_low_res_target
from backend.segmentation.prompts import Prompt
from backend.segmentation.segmenter import Embedding, MaskResult, PerImageMemo

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


def features_tensor(embedding: Embedding, device: torch.device) -> torch.Tensor:
    """The embedding's image features as a float32 tensor on `device` (the cache may hold float16)."""
    return torch.from_numpy(embedding.features).to(device, torch.float32)


class SamSegmenter:
    """Embeds with the image encoder; decodes with the prompt encoder + mask decoder.

    Unlike `SamPredictor` it keeps no per-image state that a request depends on, so one instance serves
    concurrent requests and embeddings can live in a shared cache. For a single click it asks for SAM's
    three candidate masks and keeps the best-scored one (the ambiguity rule of the SAM paper); only that
    one is upscaled. Decoding goes through `FastMaskDecoder`, whose per-image context is memoised for
    the few most recent images (clicks come in bursts on one image).
    """

    contexts_kept = 4

    def __init__(self, model: Sam, name: str, device: torch.device, fingerprint: str | None = None,
                 float16_features: bool = False):
        self.model = model.to(device).eval()
        self.features_dtype = np.float16 if float16_features else np.float32
        self.name = name
        self.device = device
        self.version: str | None = None  # a fine-tuned decoder's version name
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.fingerprint = fingerprint or f"{name}-{weights_fingerprint(model.image_encoder)}"
        self.encoder = model.image_encoder  # or a graph runtime's GraphEncoder (encoder_runtime.py)
        with torch.inference_mode():
            self.fast = FastMaskDecoder(self.model)
        self._contexts: PerImageMemo[ImageContext] = PerImageMemo(self.contexts_kept)

    def with_decoder(self, decoder_state: dict, version: str) -> SamSegmenter:
        """The same encoders with another (fine-tuned) mask decoder; embeddings stay shareable."""
        model = Sam(
            image_encoder=self.model.image_encoder,
            prompt_encoder=self.model.prompt_encoder,
            mask_decoder=copy.deepcopy(self.model.mask_decoder),
            pixel_mean=self.model.pixel_mean.flatten().tolist(),
            pixel_std=self.model.pixel_std.flatten().tolist(),
        )
        model.mask_decoder.load_state_dict(decoder_state, strict=True)
        tuned = SamSegmenter(model, self.name, self.device, fingerprint=self.fingerprint,
                             float16_features=self.features_dtype == np.float16)
        tuned.encoder = self.encoder
        tuned.version = version
        return tuned

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        height, width = image.shape[:2]
        if min(self.transform.get_preprocess_shape(height, width, self.transform.target_length)) < 1:
            raise ImageError(f"a {width}x{height} image is too thin for SAM: its short side would vanish when the "
                             f"long side is scaled to {self.transform.target_length} px", "image")
        resized = self.transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        features = self.encoder(self.model.preprocess(pixels.float()))
        return Embedding(
            features=features.cpu().numpy().astype(self.features_dtype, copy=False),
            original_size=(int(image.shape[0]), int(image.shape[1])),
            input_size=(int(resized.shape[0]), int(resized.shape[1])),
        )

    def prompt_tensors(self, embedding: Embedding, prompt: Prompt | list[Prompt]):
        """The prompt encoder's point and box inputs: pixel prompts mapped into the encoder's frame (a list:
        a batch of prompts of one kind, the same point count and all with or all without a box)."""
        prompts = prompt if isinstance(prompt, list) else [prompt]
        points = boxes = None
        if len(prompts[0].points):
            coords = np.stack([self.transform.apply_coords(p.points.astype(np.float32), embedding.original_size)
                               for p in prompts])
            points = (
                torch.as_tensor(coords, dtype=torch.float, device=self.device),
                torch.as_tensor(np.stack([p.labels for p in prompts]), dtype=torch.int, device=self.device),
            )
        if prompts[0].box is not None:
            box = self.transform.apply_boxes(np.stack([p.box for p in prompts]).astype(np.float32),
                                             embedding.original_size)
            boxes = torch.as_tensor(box, dtype=torch.float, device=self.device)
        return points, boxes

    # ------------------------------------------------------------ fine-tuning and everything mode
    def trainable_decoder(self) -> torch.nn.Module:
        """A copy of the mask decoder to fine-tune (the encoders stay frozen, so cached embeddings stay valid)."""
        return copy.deepcopy(self.model.mask_decoder)

    def decoder_logits(self, decoder, embedding: Embedding, prompts: list[Prompt], multimask: bool,
                       mask_input: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (PxKx256x256) and scores (PxK) of `decoder` (the official decoder's code path) for a
        batch of prompts; differentiable in the decoder's weights outside inference mode."""
        with torch.no_grad():
            points, boxes = self.prompt_tensors(embedding, prompts)
            masks = None if mask_input is None else torch.as_tensor(mask_input, dtype=torch.float,
                                                                    device=self.device).reshape(1, 1, 256, 256)
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return decoder(image_embeddings=features_tensor(embedding, self.device),
                       image_pe=self.model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                       dense_prompt_embeddings=dense, multimask_output=multimask)

    def logits_target(self, mask: np.ndarray, embedding: Embedding) -> torch.Tensor:
        return torch.from_numpy(padded_low_res_target(mask, embedding.input_size, self.model.image_encoder.img_size))

    def everything(self, image: np.ndarray, embedding, settings) -> list[tuple[np.ndarray, float]]:
        """segment_anything's automatic mask generator (its point grid, crops and filters) on the image (it
        embeds the image itself: `embedding`, the cached one's provider, is not called)."""
        from segment_anything import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(self.model, points_per_side=settings.everything_points_per_side,
                                              pred_iou_thresh=settings.everything_iou_threshold,
                                              stability_score_thresh=settings.everything_stability_threshold)
        found = sorted(generator.generate(image), key=lambda m: -m["predicted_iou"])
        return [(m["segmentation"].astype(bool), float(m["predicted_iou"])) for m in found]

    def _context(self, embedding: Embedding) -> ImageContext:
        """The fast decoder's per-image tensors (kept for the most recent images)."""
        return self._contexts.get(embedding, lambda e: self.fast.image_context(features_tensor(e, self.device)))

    @torch.inference_mode()
    def decode(self, embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None) -> MaskResult:
        points, boxes = self.prompt_tensors(embedding, prompt)
        multimask = prompt.is_single_click and mask_input is None
        if mask_input is None:
            sparse, _ = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
            chosen, score = self.fast.decode(self._context(embedding), sparse, multimask)
        else:  # a mask prompt changes the image tokens: the official decoder
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
            low_res, scores = self.model.mask_decoder(
                image_embeddings=features_tensor(embedding, self.device),
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            chosen, score = low_res[:, :1], scores[0, :1]
        upscaled = self.model.postprocess_masks(chosen, embedding.input_size, embedding.original_size)
        mask = (upscaled[0, 0] > self.model.mask_threshold).cpu().numpy()
        return MaskResult(mask=mask, score=float(score[0]), low_res_logits=chosen[0].cpu().numpy())
