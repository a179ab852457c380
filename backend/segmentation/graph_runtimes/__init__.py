"""Runtimes that run an exported (ONNX) encoder graph, one module per runtime (ENCODER_RUNTIME=<its name>).

A runtime names the package it needs, its version (with whatever else decides its numbers, e.g. the precision
it computes in here), how close to eager float32 a fresh export must come on it, and how to load a graph into a
function from the input array to the output arrays. Adding a runtime is adding a module to `_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Run = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class GraphRuntime:
    name: str  # the ENCODER_RUNTIME value
    package: str  # what to pip install
    min_cosine: float  # a fresh export's agreement (cosine, norm ratio) with eager float32 PyTorch, one random input
    version: Callable[[], str]  # raises ImportError when the package is not installed
    load: Callable[[Path, int], Run]  # (graph file, threads) -> run


_MODULES = ("onnx_runtime", "openvino_runtime")


def _runtimes() -> dict[str, GraphRuntime]:
    runtimes = (importlib.import_module(f"{__name__}.{module}").RUNTIME for module in _MODULES)
    return {runtime.name: runtime for runtime in runtimes}


GRAPH_RUNTIMES = _runtimes()
