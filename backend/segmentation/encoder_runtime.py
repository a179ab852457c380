"""Image encoders' runtime (ENCODER_RUNTIME): eager PyTorch, or ONNX Runtime on an exported graph. Used by SAM /
MobileSAM's image encoder and by OWLv2's vision tower (prelabel/detector.py).

On this 2-core CPU, ONNX Runtime's graph optimisations run MobileSAM's encoder about twice as fast as
eager PyTorch with the same features (cosine 1.0, bench `encoder_runtime`). The graph is exported once
per checkpoint into MODEL_DIR/onnx/<engine fingerprint>.onnx (atomically), next to a sidecar that says
what it was exported from; a file that is missing, unreadable or made from other weights or by another
torch / onnxruntime is rebuilt, never used. ONNX Runtime runs every graph with its constant-folding pass off:
on SAM 2.1's Hiera encoder that pass gave NaNs or wrong features in some sessions and not in others (the
exporter folds constants already; MobileSAM is as fast without it). A fresh export is checked against eager
PyTorch on one random input before it is used (every output finite, cosine >= 0.9999); one that differs is not
used. `auto` takes ONNX Runtime when it can and falls back to eager with the reason logged; `onnx` fails with a
clear error instead.
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


DISABLED_OPTIMIZERS = ("ConstantFolding",)  # not deterministic on SAM 2.1's encoder (see above)
MIN_COSINE = 0.9999  # a fresh export's outputs against eager PyTorch's, on one random input


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=list(DISABLED_OPTIMIZERS))


def _export(encoder: torch.nn.Module, path: Path, shape: ExportShape) -> None:
    """Export `encoder` to `path`, written atomically (a reader sees old or new)."""
    graph = io.BytesIO()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape branches: the input size is fixed
        torch.onnx.export(encoder, (torch.zeros(shape.input),), graph, input_names=["pixels"],
                          output_names=list(shape.outputs), dynamo=False, opset_version=17)
    write_atomic(path, graph.getvalue())


def as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _worst_cosine(expected: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> float:
    """The lowest cosine similarity over the outputs (0 when any output is not finite or has another shape)."""
    worst = 1.0
    for a, b in zip(expected, got, strict=True):
        a, b = a.detach().double().flatten(), b.detach().double().flatten()
        if a.shape != b.shape or not torch.isfinite(b).all():
            return 0.0
        norms = float(a.norm() * b.norm())  # float64: random weights' outputs can be ~1e-19 and still exact
        if norms > 0:
            worst = min(worst, float(a @ b) / norms)
        elif float(a.norm() + b.norm()) > 0:  # one of them all zeros
            return 0.0
    return worst


def _checked(encoder: torch.nn.Module, runner: OnnxEncoder, shape: ExportShape) -> OnnxEncoder:
    """`runner` if it gives eager PyTorch's outputs on a random input; an export that differs is refused."""
    pixels = torch.randn(shape.input, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = as_tuple(encoder(pixels))
    cosine = _worst_cosine(expected, as_tuple(runner(pixels)))
    if cosine < MIN_COSINE:
        raise RuntimeError(f"the ONNX export of {runner.path.name} does not reproduce eager PyTorch (output cosine "
                           f"{cosine:.4f} against {MIN_COSINE})")
    return runner


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
    encoder = encoder.cpu().eval()
    sidecar.unlink(missing_ok=True)  # the graph changes first: no sidecar may vouch for it meanwhile
    _export(encoder, path, shape)
    runner = _checked(encoder, OnnxEncoder(_session(path), path), shape)
    write_atomic(sidecar, json.dumps(stamp).encode())
    return runner


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
