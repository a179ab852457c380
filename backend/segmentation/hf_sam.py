"""What the transformers SAM families (SAM 2.1, SAM-HQ) share: loading from a hub id or a `save_pretrained`
folder, and a stateless embed / decode pair whose decoder can be swapped for a project's fine-tuned one.

A family module subclasses `TransformersSegmenter` with its image preprocessing, its encoder call, its
mapping of pixel prompts into the model's frame, its decoder call and its upscaling; everything else
(the three-mask choice for one click, float16 caches, fine-tuning hooks, everything mode) lives here once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from backend.core.errors import ModelUnavailableError
from backend.core.pretrained import from_pretrained, resolve_device
from backend.core.settings import HUB_CHECKPOINTS, Settings
from backend.segmentation.prompts import Prompt
from backend.segmentation.sam import weights_fingerprint
from backend.segmentation.segmenter import Embedding, MaskResult, PerImageMemo

logger = logging.getLogger(__name__)


MODEL_TYPES = {"sam2": "sam2", "sam_hq": "sam_hq", "sam3": "sam3_video"}  # SAM_ENGINE -> its config's model_type


def load_pretrained(settings: Settings, model_class) -> torch.nn.Module:
    """`model_class.from_pretrained(SAM_CHECKPOINT)`: a folder, or a hub id (downloaded to the hub cache where
    the network allows and SAM_DOWNLOAD is on). A folder of another family names the engine to use."""
    from transformers import AutoConfig
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bars in the server log
    model_type = MODEL_TYPES[settings.sam_engine]
    source = settings.checkpoint_source
    local_only = not settings.sam_download
    if Path(source).is_file():
        raise ModelUnavailableError(
            f"SAM_ENGINE={settings.sam_engine} loads a transformers model (a save_pretrained folder or a hub id "
            f"such as {HUB_CHECKPOINTS[settings.sam_engine]}), not the file {Path(source).name}", "SAM_CHECKPOINT")

    def load(name: str):
        config = AutoConfig.from_pretrained(name, local_files_only=local_only)
        if config.model_type != model_type:
            engine = next((e for e, t in MODEL_TYPES.items() if t == config.model_type), None)
            hint = f"; set SAM_ENGINE={engine}" if engine else ""
            raise ValueError(f"it holds a {config.model_type!r} model, not {model_type!r}{hint}")
        return model_class.from_pretrained(name, local_files_only=local_only)

    model = from_pretrained(load, source, f"SAM_ENGINE={settings.sam_engine} model", "SAM_CHECKPOINT",
                            HUB_CHECKPOINTS[settings.sam_engine])
    return model.to(resolve_device(settings.device)).eval()


class _EncodeGraph(torch.nn.Module):
    """A family's `encode` as a module with tuple outputs (`encoder_outputs` order), for the ONNX export."""

    def __init__(self, segmenter: TransformersSegmenter):
        super().__init__()
        self.model = segmenter.model
        self.segmenter = [segmenter]  # not a submodule: only the model's weights belong to the graph

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arrays = self.segmenter[0].encode(pixels)
        return tuple(arrays[name] for name in self.segmenter[0].encoder_outputs)


class TransformersSegmenter:
    """Embeds with a transformers SAM family's vision encoder; decodes with its prompt encoder and mask decoder.

    Subclasses set `family` and implement `preprocess`, `encode`, `to_model_frame`, `run_decoder`, `upscale`
    and `logits_target`. Stateless per request: one instance serves concurrent requests."""

    family = ""
    encoder_outputs: tuple[str, ...] = ()  # what `encode` returns, in order: set by families whose encoder exports
    auto_runtimes: tuple[str, ...] = ("openvino", "onnx")  # what ENCODER_RUNTIME=auto tries (bench encoder_runtime)
    mask_threshold = 0.0
    tensors_kept = 4  # images whose decoder inputs stay converted (clicks come in bursts on one image)

    def __init__(self, model: torch.nn.Module, name: str, device: torch.device, float16_features: bool = False,
                 decoder: torch.nn.Module | None = None, fingerprint: str | None = None):
        self.model = model.to(device).eval()
        self.decoder = (decoder or model.mask_decoder).to(device).eval()
        self.name = name
        self.device = device
        self.features_dtype = np.float16 if float16_features else np.float32
        self.version: str | None = None  # a fine-tuned decoder's version name
        self.fingerprint = fingerprint or f"{name}-{weights_fingerprint(model.vision_encoder)}"
        with torch.inference_mode():
            self.image_pe = model.get_image_wide_positional_embeddings().to(device)
        self._tensors: PerImageMemo[dict[str, torch.Tensor]] = PerImageMemo(self.tensors_kept)
        self.encoder_runner = None  # a graph runtime's run of `encode` (use_encoder_runtime)
        self.runtime = "torch"

    # ------------------------------------------------------------ per family
    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(pixel_values 1x3xSxS, the (height, width) the image fills inside it)."""
        raise NotImplementedError

    def encode(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The named arrays the decoder needs ("features" is the image embedding)."""
        raise NotImplementedError

    def to_model_frame(self, coords: np.ndarray, embedding: Embedding) -> np.ndarray:
        """Pixel coordinates (..., 2) of the original image mapped into the model's input frame."""
        raise NotImplementedError

    def run_decoder(self, decoder, arrays: dict[str, torch.Tensor], sparse, dense, multimask: bool):
        """The decoder's (low-res logits 1xPxKxhxw, scores 1xPxK)."""
        raise NotImplementedError

    def upscale(self, logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """Low-res logits (NxKxhxw) at the original image size (NxKxHxW)."""
        raise NotImplementedError

    def logits_target(self, mask: np.ndarray, embedding: Embedding) -> torch.Tensor:
        """A mask (original size) in the decoder's low-res output frame, float in [0, 1]: the training target."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared
    def _arrays(self, embedding: Embedding) -> dict[str, torch.Tensor]:
        """The embedding's arrays as float32 tensors on the device, kept for the most recent images when
        serving (training makes fresh ones: kept ones are inference-mode tensors autograd cannot save)."""
        if torch.is_grad_enabled():
            return self._tensors_of(embedding)
        return self._tensors.get(embedding, self._tensors_of)

    def _tensors_of(self, embedding: Embedding) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.ascontiguousarray(array)).to(self.device, torch.float32)
                for name, array in embedding.arrays.items()}

    def use_encoder_runtime(self, runtime: str, folder: Path) -> str:
        """ENCODER_RUNTIME for the vision encoder: `encode` exported once as one graph of `encoder_outputs` into
        `folder` and run by a graph runtime (same rules and fallback as SAM's encoder). Returns the runtime in use."""
        from backend.segmentation.encoder_runtime import ExportShape, choose_encoder

        if not self.encoder_outputs or (runtime == "auto" and not self.auto_runtimes):
            return self.runtime
        pixels, _ = self.preprocess(np.zeros((8, 8, 3), np.uint8))
        shape = ExportShape(tuple(pixels.shape), self.encoder_outputs)
        runner = choose_encoder(_EncodeGraph(self), self.fingerprint, runtime, folder, self.device, shape,
                                self.auto_runtimes)
        if not isinstance(runner, torch.nn.Module):
            self.encoder_runner, self.runtime = runner, runner.runtime
        return self.runtime

    def _encode(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.encoder_runner is None:
            return self.encode(pixel_values)
        from backend.segmentation.encoder_runtime import as_tuple

        return dict(zip(self.encoder_outputs, as_tuple(self.encoder_runner(pixel_values)), strict=True))

    @torch.inference_mode()
    def embed(self, image: np.ndarray) -> Embedding:
        pixel_values, input_size = self.preprocess(image)
        arrays = {name: t.cpu().numpy().astype(self.features_dtype, copy=False)
                  for name, t in self._encode(pixel_values.to(self.device)).items()}
        features = arrays.pop("features")
        return Embedding(features=features, original_size=(int(image.shape[0]), int(image.shape[1])),
                         input_size=input_size, extra=arrays)

    def prompt_inputs(self, embedding: Embedding, prompts: list[Prompt]) -> dict:
        """The prompt encoder's inputs for a batch of prompts of one kind (same point count, all with or all
        without a box), in transformers' layout: points 1xPxNx2, labels 1xPxN, boxes 1xPx4."""
        inputs: dict = {"input_points": None, "input_labels": None, "input_boxes": None}
        if len(prompts[0].points):
            points = np.stack([self.to_model_frame(p.points.astype(np.float32), embedding) for p in prompts])
            labels = np.stack([np.asarray(p.labels, np.int64) for p in prompts])
            inputs["input_points"] = torch.as_tensor(points, dtype=torch.float32, device=self.device)[None]
            inputs["input_labels"] = torch.as_tensor(labels, dtype=torch.long, device=self.device)[None]
        if prompts[0].box is not None:
            boxes = np.stack([self.to_model_frame(p.box.reshape(2, 2).astype(np.float32), embedding).reshape(4)
                              for p in prompts])
            inputs["input_boxes"] = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)[None]
        return inputs

    def decoder_logits(self, decoder, embedding: Embedding, prompts: list[Prompt], multimask: bool,
                       mask_input: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (PxKxhxw) and scores (PxK) of `decoder` for a batch of prompts; differentiable in the
        decoder's weights when called outside inference mode (training)."""
        masks = None
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float32, device=self.device)
            masks = masks.reshape(1, 1, *masks.shape[-2:])
        inputs = self.prompt_inputs(embedding, prompts)
        with torch.no_grad():  # the prompt encoder is frozen
            sparse, dense = self.model.prompt_encoder(input_masks=masks, **inputs)
        logits, scores = self.run_decoder(decoder, self._arrays(embedding), sparse, dense, multimask)
        return logits[0], scores[0]

    @torch.inference_mode()
    def decode(self, embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None) -> MaskResult:
        multimask = prompt.is_single_click and mask_input is None
        logits, scores = self.decoder_logits(self.decoder, embedding, [prompt], multimask, mask_input)
        best = int(torch.argmax(scores[0]))  # one click: the best of the three candidates (SAM's ambiguity rule)
        chosen = logits[:1, best:best + 1]
        mask = (self.upscale(chosen, embedding)[0, 0] > self.mask_threshold).cpu().numpy()
        return MaskResult(mask=mask, score=float(scores[0, best]), low_res_logits=chosen[0].cpu().numpy())

    @torch.inference_mode()
    def point_candidates(self, embedding: Embedding, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything mode: the three candidates of each single positive click (points: Px2 pixels)."""
        prompts = [Prompt(points=point[None], labels=np.array([1])) for point in points.astype(np.float32)]
        return self.decoder_logits(self.decoder, embedding, prompts, multimask=True)

    def everything(self, image: np.ndarray, embedding: Callable[[], Embedding],
                   settings: Settings) -> list[tuple[np.ndarray, float]]:
        """Everything mode: the point grid decoded on the (cached) embedding."""
        from backend.segmentation.everything import grid_masks

        return grid_masks(self, embedding(), settings)

    def trainable_decoder(self) -> torch.nn.Module:
        """A copy of the mask decoder to fine-tune (the encoders stay frozen, so cached embeddings stay valid)."""
        return copy.deepcopy(self.decoder)

    def with_decoder(self, decoder_state: dict, version: str) -> TransformersSegmenter:
        """The same encoders with another (fine-tuned) mask decoder; embeddings stay shareable."""
        decoder = copy.deepcopy(self.decoder)
        decoder.load_state_dict(decoder_state, strict=True)
        tuned = type(self)(self.model, self.name, self.device, self.features_dtype == np.float16, decoder=decoder,
                           fingerprint=self.fingerprint)
        tuned.version = version
        return tuned
