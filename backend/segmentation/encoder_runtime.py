"""Image encoders' runtime (ENCODER_RUNTIME): eager PyTorch, or ONNX Runtime on an exported graph. Used by SAM /
MobileSAM's image encoder and by OWLv2's vision tower (prelabel/detector.py).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.core.errors import ModelUnavailableError
from backend.core.files import write_atomic

logger = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnx", "auto")


@dataclass(frozen=True)
class ExportShape:
    """The fixed input shape an encoder is exported for, and the names of its outputs."""

    input: tuple[int, ...] = (1, 3, 1024, 1024)  # SAM's encoders take a padded 1024x1024 image
    outputs: tuple[str, ...] = ("features",)


SAM_ENCODER = ExportShape()


class OnnxEncoder:
    """Calls an exported image encoder through ONNX Runtime; takes and returns torch tensors (a tuple when the
    encoder has several outputs)."""

    def __init__(self, session, path: Path):
        self.session = session
        self.path = path
        self.input_name = session.get_inputs()[0].name

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), np.float32)
        outputs = tuple(torch.from_numpy(o) for o in self.session.run(None, {self.input_name: array}))
        return outputs[0] if len(outputs) == 1 else outputs


def _stamp(fingerprint: str, shape: ExportShape) -> dict:
    import onnxruntime

    return {"fingerprint": fingerprint, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "input": list(shape.input), **({"outputs": list(shape.outputs)} if shape != SAM_ENCODER else {})}


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(encoder: torch.nn.Module, path: Path, stamp: dict, shape: ExportShape) -> None:
    """Export `encoder` to `path` and its sidecar, each written atomically (a reader sees old or new)."""
    graph = io.BytesIO()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape branches: the input size is fixed
        torch.onnx.export(encoder, (torch.zeros(shape.input),), graph, input_names=["pixels"],
                          output_names=list(shape.outputs), dynamo=False, opset_version=17)
    write_atomic(path, graph.getvalue())
    write_atomic(path.with_suffix(".json"), json.dumps(stamp).encode())


def onnx_encoder(encoder: torch.nn.Module, fingerprint: str, folder: Path,
                 shape: ExportShape = SAM_ENCODER) -> OnnxEncoder:
    """The encoder's ONNX Runtime session, exporting it first unless a matching export is there."""
    stamp = _stamp(fingerprint, shape)
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
    _export(encoder.cpu().eval(), path, stamp, shape)
    return OnnxEncoder(_session(path), path)


def choose_encoder(encoder: torch.nn.Module, fingerprint: str, runtime: str, folder: Path,
                   device: torch.device, shape: ExportShape = SAM_ENCODER):
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
        return onnx_encoder(encoder, fingerprint, folder, shape)
    except Exception as exc:
        if runtime == "onnx":
            raise ModelUnavailableError(f"ENCODER_RUNTIME=onnx cannot be used: {exc}", "ENCODER_RUNTIME")
        logger.warning("ENCODER_RUNTIME=auto: using eager PyTorch for the image encoder (%s)", exc)
        return encoder
