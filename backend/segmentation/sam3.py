"""SAM 3 (transformers) as a Segmenter: one ViT backbone, two heads.

The checkpoint (`facebook/sam3`, a `sam3_video` config) holds the concept detector (`Sam3Model`: text
and exemplar boxes in, every matching instance out) and the tracker (`Sam3TrackerModel`: SAM 2 style
clicks and boxes). Both read the same ViT backbone through their own FPN necks, so the backbone is kept
once and runs once per image: its output is the cached embedding, and each head's neck is applied to it
when the head is first asked about the image (kept for the most recent images).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from backend.core.errors import ModelUnavailableError
from backend.core.pretrained import resolve_device
from backend.core.settings import Settings
from backend.segmentation import compat
from backend.segmentation.hf_sam import load_pretrained
from backend.segmentation.sam import weights_fingerprint
from backend.segmentation.sam2 import Sam2Segmenter
from backend.segmentation.segmenter import Embedding, PerImageMemo

logger = logging.getLogger(__name__)
LICENCE_PAGE = "https://huggingface.co/facebook/sam3"  # the SAM License; the repository is gated
TEXT_LENGTH = 32  # Sam3Processor pads every phrase to 32 tokens


@dataclass(frozen=True)
class ConceptQuery:
    """What to find: a noun phrase and/or exemplar boxes (XYXY in fractions 0..1 of the image's width and
    height; label 1 = like this, 0 = not like this). Exemplars without a phrase use "visual", as Sam3Processor
    does."""

    text: str = "visual"
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))


@dataclass
class Instance:
    """One found instance: its mask at the image's size, its box (XYXY pixels) and its score."""

    mask: np.ndarray
    box: tuple[float, float, float, float]
    score: float


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


class Sam3Segmenter(Sam2Segmenter):
    """Clicks and boxes through the tracker (as SAM 2.1), concepts through the detector; one backbone."""

    family = "sam3"
    encoder_outputs = ()  # its 848 M-parameter backbone stays in PyTorch (not exported)

    def __init__(self, tracker: torch.nn.Module, detector: torch.nn.Module, tokenizer, name: str,
                 device: torch.device, float16_features: bool = False):
        self.detector = detector.to(device).eval()
        self.tokenizer = tokenizer
        if _same_weights(tracker.vision_encoder.backbone, detector.vision_encoder.backbone):
            tracker.vision_encoder.backbone = detector.vision_encoder.backbone  # one copy in memory
        else:
            logger.warning("SAM 3 tracker and detector have different backbones; only the detector's is used")
        super().__init__(tracker, name, device, float16_features,
                         fingerprint=f"{name}-{weights_fingerprint(detector.vision_encoder.backbone)}")
        self._detector_inputs: PerImageMemo = PerImageMemo(self.tensors_kept)

    @property
    def backbone(self) -> torch.nn.Module:
        return self.detector.vision_encoder.backbone

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Scaled to -1..1, as Sam3Processor does."""
        return (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5

    def encode(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone's output as a 1xCxhxw map: the one array both heads start from."""
        hidden = self.backbone(pixel_values).last_hidden_state
        patch = self.backbone.config.patch_size
        height, width = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
        return {"features": hidden.view(1, height, width, -1).permute(0, 3, 1, 2)}

    def _backbone_map(self, embedding: Embedding) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(embedding.features)).to(self.device, torch.float32)

    def _tensors_of(self, embedding: Embedding) -> dict[str, torch.Tensor]:
        """The tracker's decoder inputs, as Sam3TrackerModel.forward makes them from pixels: its neck on the
        backbone map, the two finest maps projected by the decoder's conv_s0 / conv_s1, the no-memory embedding
        added to the last neck level, and as many levels kept as the tracker has feature sizes."""
        maps = list(self.model.vision_encoder.neck(self._backbone_map(embedding))[0])
        maps[0] = self.model.mask_decoder.conv_s0(maps[0])
        maps[1] = self.model.mask_decoder.conv_s1(maps[1])
        maps[-1] = maps[-1] + self.model.no_memory_embedding.reshape(1, -1, 1, 1)
        maps = maps[: len(self.model.backbone_feature_sizes)]
        return {"features": maps[-1], "high_res_s0": maps[0], "high_res_s1": maps[1]}

    # ------------------------------------------------------------ concepts
    def _vision_embeds(self, embedding: Embedding):
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        with torch.inference_mode():
            fpn, positions = self.detector.vision_encoder.neck(self._backbone_map(embedding))
        return Sam3VisionEncoderOutput(fpn_hidden_states=fpn, fpn_position_encoding=positions)

    @torch.inference_mode()
    def concepts(self, embedding: Embedding, queries: list[ConceptQuery], threshold: float,
                 limit: int | None = None) -> list[list[Instance]]:
        """Every instance of each query scoring above `threshold` (at most `limit` per query), best first
        (Sam3Processor's instance post-processing: detection score times presence score, masks resized then
        cut at 0.5). The backbone is not run again; all phrases go through the text encoder in one batch."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if not queries:
            return []
        vision = self._detector_inputs.get(embedding, self._vision_embeds)
        tokens = self.tokenizer([q.text for q in queries], padding="max_length", max_length=TEXT_LENGTH,
                                truncation=True, return_tensors="pt").to(self.device)
        text = self.detector.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        found = []
        for index, query in enumerate(queries):
            output = self.detector(
                vision_embeds=vision, attention_mask=tokens.attention_mask[index:index + 1],
                text_embeds=BaseModelOutputWithPooling(pooler_output=text.pooler_output[index:index + 1]),
                **self._box_inputs(query))
            found.append(self._instances(output, threshold, embedding.original_size, limit))
        return found

    def _box_inputs(self, query: ConceptQuery) -> dict:
        """Exemplar boxes as the detector takes them: centre, width, height relative to the image."""
        if not len(query.boxes):
            return {}
        x0, y0, x1, y1 = np.asarray(query.boxes, np.float32).reshape(-1, 4).T
        boxes = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1)
        return {"input_boxes": torch.as_tensor(boxes, device=self.device)[None],
                "input_boxes_labels": torch.as_tensor(np.asarray(query.box_labels, np.int64), device=self.device)[None]}

    @staticmethod
    def _instances(output, threshold: float, size: tuple[int, int], limit: int | None = None) -> list[Instance]:
        scores = output.pred_logits[0].sigmoid()
        if output.presence_logits is not None:
            scores = scores * output.presence_logits[0].sigmoid()
        keep = scores > threshold
        if limit is not None and int(keep.sum()) > limit:  # only the best are resized to the image
            keep &= scores >= torch.topk(scores, limit).values[-1]
        if not bool(keep.any()):
            return []
        height, width = size
        masks = F.interpolate(output.pred_masks[0][keep].sigmoid()[None], size=size, mode="bilinear",
                              align_corners=False)[0] > 0.5
        boxes = output.pred_boxes[0][keep] * torch.tensor([width, height, width, height], dtype=torch.float32)
        found = [Instance(mask.cpu().numpy(), tuple(float(v) for v in box), float(score))
                 for mask, box, score in zip(masks, boxes.tolist(), scores[keep].tolist(), strict=True)]
        return sorted(found, key=lambda instance: -instance.score)


def load_sam3(settings: Settings) -> Sam3Segmenter:
    """Detector, tracker and tokenizer from SAM_CHECKPOINT (a hub id or a folder holding a `sam3_video`
    checkpoint, as facebook/sam3 is)."""
    from transformers import AutoTokenizer, Sam3Model, Sam3TrackerModel
    from transformers.models.sam3 import modeling_sam3

    compat.provide_torchvision_ops(modeling_sam3)

    try:
        detector = load_pretrained(settings, Sam3Model)
        tracker = load_pretrained(settings, Sam3TrackerModel)
        tokenizer = AutoTokenizer.from_pretrained(settings.checkpoint_source,
                                                  local_files_only=not settings.sam_download)
    except ModelUnavailableError as exc:
        raise ModelUnavailableError(
            f"{exc} SAM 3 is under Meta's SAM License and gated on the hub: accept it at {LICENCE_PAGE}, then log in "
            "(`hf auth login` or HF_TOKEN) or download the repository and point SAM_CHECKPOINT at its folder.",
            exc.where)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"the SAM 3 tokenizer in {settings.checkpoint_source!r} could not be loaded ({exc}); SAM_CHECKPOINT must "
            f"hold the whole repository of {LICENCE_PAGE}", "SAM_CHECKPOINT")
    return Sam3Segmenter(tracker, detector, tokenizer, settings.sam_engine, resolve_device(settings.device),
                         float16_features=settings.embedding_float16)
