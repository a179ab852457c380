"""Text-grounded detector families: how each model family takes category prompts and answers boxes.

A family is a module with `MODEL_TYPES` (transformers `model_type`s it serves), `inputs` and `boxes`, and
optionally `load` and `accelerate`; adding a detector family means adding a module and naming it in `_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

Found = tuple[tuple[float, float, float, float], float, int | None]  # box (x0, y0, x1, y1 in pixels), score, prompt


def load_auto(path: str) -> tuple[Any, torch.nn.Module]:
    """AutoProcessor + AutoModelForZeroShotObjectDetection: what most families need."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    return AutoProcessor.from_pretrained(path), AutoModelForZeroShotObjectDetection.from_pretrained(path).eval()


@dataclass(frozen=True)
class Family:
    inputs: Callable[[Any, np.ndarray, list[str]], Mapping]  # (processor, image, prompts) -> model inputs
    boxes: Callable[[Any, Any, Mapping, list[str], float, tuple[int, int]], list[Found]]  # + output, threshold, hw
    load: Callable[[str], tuple[Any, torch.nn.Module]] = load_auto
    accelerate: Callable[..., str] | None = None  # (model, runtime, folder, device) -> runtime in use


_MODULES = ("owlv2", "owl", "grounding_dino", "omdet_turbo")


def _family(module: ModuleType) -> Family:
    return Family(module.inputs, module.boxes, getattr(module, "load", load_auto), getattr(module, "accelerate", None))


def family_for(model_type: str) -> Family:
    """The family serving a transformers `model_type`; a clear error for one no family serves."""
    for name in _MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        if model_type in module.MODEL_TYPES:
            return _family(module)
    served = sorted(t for name in _MODULES for t in importlib.import_module(f"{__name__}.{name}").MODEL_TYPES)
    raise ValueError(f"model type {model_type!r} is not a text-grounded detector this backend runs "
                     f"({', '.join(served)})")
