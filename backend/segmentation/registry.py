"""Engine registry: SAM architectures by name, official checkpoint loading, and the weight-free fallback."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch

from backend.core.errors import ModelUnavailableError
from backend.core.model_cache import ModelCache
from backend.core.pretrained import resolve_device
from backend.core.settings import OFFICIAL_CHECKPOINTS, Settings
from backend.segmentation import compat
from backend.segmentation.segmenter import Segmenter

compat.install()

from segment_anything.build_sam import _build_sam  # noqa: E402
from segment_anything.modeling import Sam  # noqa: E402

logger = logging.getLogger(__name__)
_HASH_IN_NAME = re.compile(r"_([0-9a-f]{6,})\.pth?\Z")  # sam_vit_b_01ec64.pth: the start of its MD5
OFFICIAL_MD5 = {  # the full MD5 of the official SAM files (their names carry its first 6 hex digits)
    "sam_vit_b_01ec64.pth": "01ec64d29a2fca3f0661936605ae66f8",
    "sam_vit_l_0b3195.pth": "0b3195507c641ddb6910d2bb5adee89c",
    "sam_vit_h_4b8939.pth": "4b8939a88964f0f4ff5f5b2642c598a6",
}


@dataclass(frozen=True)
class ViTArch:
    """SAM's ViT image encoder sizes (segment_anything.build_sam)."""

    # ENCODER_RUNTIME=auto (bench encoder_runtime): OpenVINO's bfloat16 moved ViT-B's click masks below IoU 0.99
    auto_runtimes: ClassVar[tuple[str, ...]] = ("onnx",)
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]

    def build(self) -> Sam:
        return _build_sam(
            encoder_embed_dim=self.encoder_embed_dim,
            encoder_depth=self.encoder_depth,
            encoder_num_heads=self.encoder_num_heads,
            encoder_global_attn_indexes=list(self.encoder_global_attn_indexes),
        )


@dataclass(frozen=True)
class TinyViTArch:
    """MobileSAM's TinyViT image encoder sizes (mobile_sam.build_sam.build_sam_vit_t)."""

    auto_runtimes: ClassVar[tuple[str, ...]] = ("openvino", "onnx")  # OpenVINO: fastest, masks kept (bench)

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)

    def build(self) -> Sam:
        from mobile_sam.modeling import MaskDecoder, PromptEncoder, TinyViT, TwoWayTransformer
        from mobile_sam.modeling import Sam as MobileSam

        model = MobileSam(
            image_encoder=TinyViT(
                img_size=1024, in_chans=3, num_classes=1000, embed_dims=list(self.embed_dims),
                depths=list(self.depths), num_heads=list(self.num_heads), window_sizes=list(self.window_sizes),
                mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
                mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
        return model.eval()


SAM_ARCHITECTURES: dict[str, ViTArch | TinyViTArch] = {
    "vit_h": ViTArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": ViTArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": ViTArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_t": TinyViTArch(),
}


def sam_architecture(engine: str, overrides: dict | None = None) -> ViTArch | TinyViTArch:
    """The architecture of `engine`, with sizes replaced by `overrides` (lists become tuples)."""
    if engine not in SAM_ARCHITECTURES:
        raise ModelUnavailableError(f"{engine!r} is not a SAM architecture; choose one of {list(SAM_ARCHITECTURES)}",
                                    "SAM_ENGINE")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}
    try:
        return replace(SAM_ARCHITECTURES[engine], **overrides)
    except TypeError as exc:
        raise ModelUnavailableError(f"SAM_ARCH_OVERRIDES does not fit {engine}: {exc}", "settings")


def build_sam(engine: str, overrides: dict | None = None) -> Sam:
    """A randomly initialised SAM of the named architecture (the checkpoint is loaded separately)."""
    return sam_architecture(engine, overrides).build()


def missing_checkpoint_message(settings: Settings) -> str:
    url = settings.checkpoint_url or OFFICIAL_CHECKPOINTS.get(settings.sam_engine, "")
    return (
        f"SAM checkpoint for SAM_ENGINE={settings.sam_engine} not found at {settings.checkpoint_path}. "
        f"Download {url} and set SAM_CHECKPOINT to its path (or SAM_DOWNLOAD=true where the network allows), "
        "or set SAM_ENGINE=grabcut to run without weights."
    )


def download_checkpoint(url: str, target: Path, timeout: float = 60.0) -> None:
    """Download `url` to `target` atomically (a partial file never takes the target's name and never stays
    behind). Official SAM file names end in the first hex digits of the file's MD5 (sam_vit_b_01ec64.pth):
    a download whose MD5 does not match (the full one, for the official files) is refused."""
    import hashlib

    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading SAM checkpoint %s -> %s", url, target)
    named = _HASH_IN_NAME.search(target.name)
    expected = OFFICIAL_MD5.get(target.name) or (named.group(1) if named else "")
    digest = hashlib.md5(usedforsecurity=False)
    part = None
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as part:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    part.write(chunk)
                    digest.update(chunk)
        if expected and not digest.hexdigest().startswith(expected):
            raise ValueError(f"MD5 {digest.hexdigest()} is not the expected {expected}: a damaged or different "
                             "file; nothing was kept")
        os.replace(part.name, target)
    except BaseException:
        if part is not None:
            Path(part.name).unlink(missing_ok=True)
        raise


def load_state_dict(path: Path) -> dict:
    """Read an official SAM / MobileSAM checkpoint (a plain state dict; {'model': ...} wrappers accepted)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelUnavailableError(f"{path} is not a readable PyTorch checkpoint: {exc}", "SAM_CHECKPOINT")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"{path} holds a {type(state).__name__}, not a state dict", "SAM_CHECKPOINT")
    return state


def load_sam(settings: Settings) -> Sam:
    """Build the configured architecture and load its checkpoint (downloading it first if allowed)."""
    path = settings.checkpoint_path
    if not path.is_file() and settings.sam_download and settings.checkpoint_url:
        try:
            download_checkpoint(settings.checkpoint_url, path)
        except Exception as exc:
            message = f"{missing_checkpoint_message(settings)} Download failed: {exc}"
            raise ModelUnavailableError(message, "SAM_CHECKPOINT")
    if not path.is_file():
        raise ModelUnavailableError(missing_checkpoint_message(settings), "SAM_CHECKPOINT")
    model = build_sam(settings.sam_engine, settings.arch_overrides)
    try:
        model.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as exc:
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])[:600]
        raise ModelUnavailableError(
            f"{path} does not fit SAM_ENGINE={settings.sam_engine} ({details}). "
            "Is SAM_ENGINE the checkpoint's architecture?",
            "SAM_CHECKPOINT",
        )
    return model


# ---------------------------------------------------------------- the engine table
CLICKS, BOX, MULTIMASK, EVERYTHING = "clicks", "box", "multimask", "everything"
TRAINABLE_DECODER, FAST_DECODER = "trainable_decoder", "fast_decoder"
CONCEPTS = "concepts"  # every instance of a phrase or of exemplar boxes (Segmenter.concepts)
FILE, PRETRAINED, NO_WEIGHTS = "file", "pretrained", "none"  # what SAM_CHECKPOINT names for an engine


@dataclass(frozen=True)
class EngineSpec:
    """One row of the engine table: what an engine can do and how it loads (SAM_ENGINE=<name>)."""

    name: str
    load: Callable[[Settings], Segmenter]
    capabilities: frozenset[str]
    weights: str = FILE  # FILE: an official checkpoint file; PRETRAINED: a hub id or save_pretrained folder

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def _load_sam(settings: Settings) -> Segmenter:
    from backend.segmentation.encoder_runtime import choose_encoder
    from backend.segmentation.sam import SamSegmenter

    device = resolve_device(settings.device)
    segmenter = SamSegmenter(load_sam(settings), settings.sam_engine, device,
                             float16_features=settings.embedding_float16)
    segmenter.encoder = choose_encoder(segmenter.model.image_encoder, segmenter.fingerprint,
                                       settings.encoder_runtime, Path(settings.model_dir) / "onnx", device,
                                       auto=SAM_ARCHITECTURES[settings.sam_engine].auto_runtimes)
    return segmenter


def _load_grabcut(settings: Settings) -> Segmenter:
    from backend.segmentation.grabcut import GrabCutSegmenter

    return GrabCutSegmenter()


def _load_sam2(settings: Settings) -> Segmenter:
    from backend.segmentation.sam2 import load_sam2

    return load_sam2(settings)


def _load_sam_hq(settings: Settings) -> Segmenter:
    from backend.segmentation.sam_hq import load_sam_hq

    return load_sam_hq(settings)


def _load_sam3(settings: Settings) -> Segmenter:
    from backend.segmentation.sam3 import load_sam3

    return load_sam3(settings)


_SAM = frozenset({CLICKS, BOX, MULTIMASK, EVERYTHING, TRAINABLE_DECODER, FAST_DECODER})
_TRANSFORMERS_SAM = _SAM - {FAST_DECODER}
ENGINES: dict[str, EngineSpec] = {
    **{name: EngineSpec(name, _load_sam, _SAM) for name in SAM_ARCHITECTURES},
    "sam2": EngineSpec("sam2", _load_sam2, _TRANSFORMERS_SAM, weights=PRETRAINED),
    "sam_hq": EngineSpec("sam_hq", _load_sam_hq, _TRANSFORMERS_SAM, weights=PRETRAINED),
    "sam3": EngineSpec("sam3", _load_sam3, (_TRANSFORMERS_SAM - {TRAINABLE_DECODER}) | {CONCEPTS}, weights=PRETRAINED),
    "grabcut": EngineSpec("grabcut", _load_grabcut, frozenset({CLICKS, BOX}), weights=NO_WEIGHTS),
}


def engine_spec(name: str) -> EngineSpec:
    """The table row of SAM_ENGINE=`name`; ModelUnavailableError naming the choices for an unknown one."""
    if name not in ENGINES:
        raise ModelUnavailableError(f"unknown SAM_ENGINE {name!r}; choose one of {list(ENGINES)}", "SAM_ENGINE")
    return ENGINES[name]


def load_segmenter(settings: Settings) -> Segmenter:
    """The configured engine, ready to embed and decode."""
    return engine_spec(settings.sam_engine).load(settings)


class SegmenterHolder:
    """The configured engine, loaded once per process on first use (a failed load is retried after a pause)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: ModelCache[Segmenter] = ModelCache(lambda: load_segmenter(settings))

    def get(self) -> Segmenter:
        return self._cache.get()

    def spec(self) -> EngineSpec:
        return engine_spec(self.settings.sam_engine)

    def status(self) -> dict:
        """For /health: loaded, loading (or downloading), or what is missing."""
        segmenter = self._cache.loaded()
        named = {"engine": self.settings.sam_engine, "checkpoint": self.checkpoint()}
        if segmenter is not None:
            return {**named, "loaded": True, "fingerprint": segmenter.fingerprint}
        if self._cache.loading():
            return {**named, "loaded": False, "loading": True}
        problem, error = None, self._cache.failure()
        try:
            spec = self.spec()
        except ModelUnavailableError as unknown:  # an unknown SAM_ENGINE, before any load
            error = error or unknown
        if error is not None:
            problem = str(error)
        elif spec.weights == FILE and not self.settings.checkpoint_path.is_file():
            problem = missing_checkpoint_message(self.settings)
        return {**named, "loaded": False, "problem": problem}

    def checkpoint(self) -> str:
        """The checkpoint's short name ('mobile_sam', 'sam2.1-hiera-tiny'); empty for weight-free engines."""
        spec = ENGINES.get(self.settings.sam_engine)
        return "" if spec is None or spec.weights == NO_WEIGHTS else self.settings.checkpoint_name
