"""The image encoder's runtime (ENCODER_RUNTIME): eager PyTorch, or ONNX Runtime on an exported graph.

On this 2-core CPU, ONNX Runtime's graph optimisations run MobileSAM's encoder about twice as fast as
eager PyTorch with the same features (cosine 1.0, bench `encoder_runtime`). The graph is exported once
per checkpoint into MODEL_DIR/onnx/<engine fingerprint>.onnx (atomically), next to a sidecar that says
what it was exported from; a file that is missing, unreadable or made from other weights or by another
torch / onnxruntime is rebuilt, never used. `auto` takes ONNX Runtime when it can and falls back to
eager with the reason logged; `onnx` fails with a clear error instead.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from backend.core.errors import ModelUnavailableError
from backend.core.files import write_atomic

logger = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnx", "auto")
INPUT_SIZE = 1024  # SAM's encoders take a padded 1024x1024 image


class OnnxEncoder:
    """Calls an exported image encoder through ONNX Runtime; takes and returns torch tensors."""

    def __init__(self, session, path: Path):
        self.session = session
        self.path = path
        self.input_name = session.get_inputs()[0].name

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def _stamp(fingerprint: str) -> dict:
    import onnxruntime

    return {"fingerprint": fingerprint, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "input": [1, 3, INPUT_SIZE, INPUT_SIZE]}


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(encoder: torch.nn.Module, path: Path, stamp: dict) -> None:
    """Export `encoder` to `path` and its sidecar, each written atomically (a reader sees old or new)."""
    graph = io.BytesIO()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape branches: the input size is fixed
        torch.onnx.export(encoder, (torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE),), graph, input_names=["pixels"],
                          output_names=["features"], dynamo=False, opset_version=17)
    write_atomic(path, graph.getvalue())
    write_atomic(path.with_suffix(".json"), json.dumps(stamp).encode())


def onnx_encoder(encoder: torch.nn.Module, fingerprint: str, folder: Path) -> OnnxEncoder:
    """The encoder's ONNX Runtime session, exporting it first unless a matching export is there."""
    stamp = _stamp(fingerprint)
    path = folder / f"{fingerprint}.onnx"
    sidecar = path.with_suffix(".json")
    try:
        current = json.loads(sidecar.read_text()) == stamp and path.is_file()
    except (OSError, ValueError):
        current = False
    if current:
        try:
            return OnnxEncoder(_session(path), path)
        except Exception as exc:  # a damaged file: rebuilt below
            logger.warning("the ONNX export %s cannot be loaded (%s): exporting it again", path.name, exc)
    logger.info("exporting the image encoder to ONNX (%s), once per checkpoint", path.name)
    _export(encoder.cpu().eval(), path, stamp)
    return OnnxEncoder(_session(path), path)


def choose_encoder(encoder: torch.nn.Module, fingerprint: str, runtime: str, folder: Path,
                   device: torch.device):
    """The callable that runs the image encoder for ENCODER_RUNTIME=`runtime` (torch | onnx | auto)."""
    if runtime not in RUNTIMES:
        raise ModelUnavailableError(f"ENCODER_RUNTIME={runtime!r} is not one of {', '.join(RUNTIMES)}",
                                    "ENCODER_RUNTIME")
    if runtime == "torch":
        return encoder
    try:
        if device.type != "cpu":
            raise RuntimeError(f"the ONNX path runs on the CPU and the model is on {device}")
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(f"onnxruntime is not installed ({exc}); pip install onnxruntime onnx") from exc
        return onnx_encoder(encoder, fingerprint, folder)
    except Exception as exc:
        if runtime == "onnx":
            raise ModelUnavailableError(f"ENCODER_RUNTIME=onnx cannot be used: {exc}", "ENCODER_RUNTIME")
        logger.warning("ENCODER_RUNTIME=auto: using eager PyTorch for the image encoder (%s)", exc)
        return encoder
