"""Image encoders' runtime (ENCODER_RUNTIME): eager PyTorch, or an exported graph run by ONNX Runtime or
OpenVINO (graph_runtimes/). Used by SAM / MobileSAM's image encoder, SAM-HQ / SAM 2.1's vision encoder and
OWLv2's vision tower (prelabel/detectors/owl.py).

The graph is exported once per checkpoint into MODEL_DIR/onnx/<engine fingerprint>.onnx (atomically), next to
a sidecar that says what it was exported from and which runtimes (at which version and precision) have checked
it; a file that is missing, unreadable or made from other weights or by another torch is exported again, never
used. A graph is checked against eager PyTorch on one random input before a runtime first uses it (every output
finite, cosine and norm ratio within the runtime's bar: 1e-4 for ONNX Runtime's float32, 1e-3 for OpenVINO, which
computes in bfloat16 where the CPU can); one that differs is not used. `auto` tries the family's runtimes in
order (fastest measured first, bench encoder_runtime) and falls back to eager with the reason logged; a named
runtime fails with a clear error instead.
"""

from __future__ import annotations

import hashlib
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
from backend.segmentation.graph_runtimes import GRAPH_RUNTIMES, GraphRuntime, Run

logger = logging.getLogger(__name__)
RUNTIMES = ("torch", *GRAPH_RUNTIMES, "auto")


@dataclass(frozen=True)
class ExportShape:
    """The fixed input shape an encoder is exported for, and the names of its outputs."""

    input: tuple[int, ...] = (1, 3, 1024, 1024)  # SAM's encoders take a padded 1024x1024 image
    outputs: tuple[str, ...] = ("features",)


SAM_ENCODER = ExportShape()


class GraphEncoder:
    """Calls an exported image encoder through a graph runtime; takes and returns torch tensors (a tuple when the
    encoder has several outputs)."""

    def __init__(self, run: Run, path: Path, runtime: str):
        self.run = run
        self.path = path
        self.runtime = runtime

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), np.float32)
        outputs = tuple(torch.from_numpy(o) for o in self.run(array))
        return outputs[0] if len(outputs) == 1 else outputs


def _export_stamp(fingerprint: str, shape: ExportShape) -> dict:
    return {"fingerprint": fingerprint, "torch": torch.__version__, "input": list(shape.input),
            **({"outputs": list(shape.outputs)} if shape != SAM_ENCODER else {})}


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


def _worst_agreement(expected: tuple[torch.Tensor, ...], got: tuple[torch.Tensor, ...]) -> float:
    """The lowest agreement over the outputs: each output's cosine similarity, lowered by how far its norm is from
    the expected one's (cosine alone cannot see a scaled output); 0 when an output is not finite or has another
    shape."""
    worst = 1.0
    for a, b in zip(expected, got, strict=True):
        a, b = a.detach().double().flatten(), b.detach().double().flatten()
        if a.shape != b.shape or not torch.isfinite(b).all():
            return 0.0
        norm_a, norm_b = float(a.norm()), float(b.norm())  # float64: random weights' outputs can be ~1e-19
        if norm_a > 0 and norm_b > 0:
            worst = min(worst, float(a @ b) / (norm_a * norm_b), 1 - abs(norm_b / norm_a - 1))
        elif norm_a + norm_b > 0:  # one of them all zeros
            return 0.0
    return worst


def _check(encoder: torch.nn.Module, runner: GraphEncoder, shape: ExportShape, runtime: GraphRuntime) -> None:
    """Raise RuntimeError unless `runner` gives eager PyTorch's outputs on a random input."""
    pixels = torch.randn(shape.input, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = as_tuple(encoder(pixels))
    agreement = _worst_agreement(expected, as_tuple(runner(pixels)))
    if agreement < runtime.min_cosine:
        raise RuntimeError(f"the ONNX export of {runner.path.name} on {runtime.name} does not reproduce eager "
                           f"PyTorch (output agreement {agreement:.4f} against {runtime.min_cosine}: cosine and "
                           "norm ratio)")


def _read_stamp(sidecar: Path) -> dict:
    try:
        stamp = json.loads(sidecar.read_text())
        return stamp if isinstance(stamp, dict) else {}
    except (OSError, ValueError):
        return {}


def graph_encoder(encoder: torch.nn.Module, fingerprint: str, folder: Path, runtime: GraphRuntime,
                  shape: ExportShape = SAM_ENCODER) -> GraphEncoder:
    """The encoder run by `runtime`, exporting it first unless a matching export is there, and checking it
    against eager PyTorch first unless this runtime (version, precision) has checked this export before."""
    version = runtime.version()
    path = folder / f"{fingerprint}.onnx"
    sidecar = path.with_suffix(".json")
    export = _export_stamp(fingerprint, shape)
    stamp = _read_stamp(sidecar)
    checked = stamp.get("checked") if stamp.get("export") == export and path.is_file() else None
    if checked is not None and stamp.get("sha256") != _digest(path):  # the file changed since it was checked
        logger.warning("the ONNX export %s is not the file its checks were made on: exporting it again", path.name)
        checked = None
    runner = None
    if isinstance(checked, dict):
        try:
            runner = GraphEncoder(runtime.load(path, torch.get_num_threads()), path, runtime.name)
        except Exception as exc:  # a damaged file: exported again below
            logger.warning("the ONNX export %s cannot be loaded (%s): exporting it again", path.name, exc)
        if runner is not None and checked.get(runtime.name) == version:
            return runner
    encoder = encoder.cpu().eval()
    if runner is None:
        logger.info("exporting the image encoder to ONNX (%s), once per checkpoint", path.name)
        sidecar.unlink(missing_ok=True)  # the graph changes first: no sidecar may vouch for it meanwhile
        _export(encoder, path, shape)
        runner, checked = GraphEncoder(runtime.load(path, torch.get_num_threads()), path, runtime.name), {}
    _check(encoder, runner, shape, runtime)
    write_atomic(sidecar, json.dumps({"export": export, "sha256": _digest(path),
                                      "checked": {**checked, runtime.name: version}}).encode())
    return runner


def _digest(path: Path) -> str:
    """The SHA-256 of a file (what a check vouches for)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _usable(runtime: str, device: torch.device) -> GraphRuntime:
    graph_runtime = GRAPH_RUNTIMES[runtime]
    if device.type != "cpu":
        raise RuntimeError(f"{runtime} runs on the CPU and the model is on {device}")
    try:
        graph_runtime.version()
    except ImportError as exc:
        raise RuntimeError(f"{graph_runtime.package} is not installed ({exc}); pip install "
                           f"{graph_runtime.package} onnx") from exc
    return graph_runtime


def choose_encoder(encoder: torch.nn.Module, fingerprint: str, runtime: str, folder: Path,
                   device: torch.device, shape: ExportShape = SAM_ENCODER, auto: tuple[str, ...] = ("onnx",)):
    """The callable that runs the image encoder for ENCODER_RUNTIME=`runtime`: `encoder` itself (torch), or a
    GraphEncoder; `auto` tries the runtimes of `auto` in order, then eager PyTorch."""
    if runtime not in RUNTIMES:
        raise ModelUnavailableError(f"ENCODER_RUNTIME={runtime!r} is not one of {', '.join(RUNTIMES)}",
                                    "ENCODER_RUNTIME")
    if runtime == "torch":
        return encoder
    reasons = []
    for name in auto if runtime == "auto" else (runtime,):
        try:
            return graph_encoder(encoder, fingerprint, folder, _usable(name, device), shape)
        except Exception as exc:
            if runtime != "auto":
                raise ModelUnavailableError(f"ENCODER_RUNTIME={runtime} cannot be used: {exc}", "ENCODER_RUNTIME")
            logger.info("ENCODER_RUNTIME=auto: %s not used for the image encoder (%s)", name, exc)
            reasons.append(f"{name}: {exc}")
    if reasons:
        logger.warning("ENCODER_RUNTIME=auto: using eager PyTorch for the image encoder (%s)", "; ".join(reasons))
    return encoder
