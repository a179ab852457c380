"""ENCODER_RUNTIME=openvino: OpenVINO's CPU plugin on the same exported graph. On a CPU with bfloat16 units
(AVX512_BF16 or AMX) it computes in bfloat16 by default: MobileSAM's encoder in about half ONNX Runtime's time
here, with image-embedding cosine >= 0.9998 and click masks at IoU >= 0.998 against eager float32 (bench
encoder_runtime); elsewhere in float32. Only the runtime is used (no model conversion tools, no telemetry)."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from backend.segmentation.graph_runtimes import GraphRuntime, Run

PRECISION: str | None = None  # None: OpenVINO's choice for the CPU (bf16 where it has bfloat16 units, else f32)


@lru_cache(maxsize=1)
def _core():
    import openvino

    return openvino.Core()


def precision() -> str:
    """The precision OpenVINO computes in here: PRECISION, else its default for this CPU."""
    return PRECISION or _core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def version() -> str:
    import openvino

    return f"{openvino.__version__} {precision()}"


def load(path: Path, threads: int) -> Run:
    compiled = _core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                        "INFERENCE_PRECISION_HINT": precision()})
    request, lock = compiled.create_infer_request(), threading.Lock()  # one request: runs are serialised
    outputs = range(len(compiled.outputs))

    def run(array: np.ndarray) -> list[np.ndarray]:
        with lock:
            request.infer({0: array})
            return [request.get_output_tensor(i).data.copy() for i in outputs]

    return run


RUNTIME = GraphRuntime("openvino", "openvino", 0.999, version, load)
