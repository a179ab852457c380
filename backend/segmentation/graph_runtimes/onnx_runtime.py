"""ENCODER_RUNTIME=onnx: ONNX Runtime's CPU provider, float32, all graph optimisations but constant folding
(which gave SAM 2.1's Hiera encoder NaNs or wrong features in some sessions and not in others; torch's exporter
folds constants already, and MobileSAM is as fast without it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.segmentation.graph_runtimes import GraphRuntime, Run

DISABLED_OPTIMIZERS = ("ConstantFolding",)


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def load(path: Path, threads: int) -> Run:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=list(DISABLED_OPTIMIZERS))
    name = session.get_inputs()[0].name

    def run(array: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {name: array})

    return run


RUNTIME = GraphRuntime("onnx", "onnxruntime", 0.9999, version, load)
