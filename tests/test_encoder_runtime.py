"""ENCODER_RUNTIME: the ONNX Runtime and OpenVINO encoders give SAM's features and masks; the export is made once
per checkpoint, rebuilt when damaged or stale, checked once per runtime, and a missing runtime is a clear error
(or, with auto, the next runtime, then eager)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.core.errors import ModelUnavailableError
from backend.core.settings import Settings
from backend.segmentation import encoder_runtime
from backend.segmentation.encoder_runtime import ExportShape, choose_encoder
from backend.segmentation.graph_runtimes import GRAPH_RUNTIMES, openvino_runtime
from backend.segmentation.prompts import Prompt
from backend.segmentation.registry import load_segmenter
from tests.helpers import TINY_ARCH, disk_image, iou


def settings(engine, checkpoint, tmp_path, runtime):
    return Settings(sam_engine=engine, sam_checkpoint=str(checkpoint), sam_download=False,
                    sam_arch_overrides=json.dumps(TINY_ARCH[engine]), model_dir=str(tmp_path / "models"),
                    encoder_runtime=runtime, embedding_float16=False)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
@pytest.mark.parametrize("engine", ["vit_t", "vit_b"])
def test_graph_encoders_give_the_eager_features_and_masks(engine, runtime, tiny_checkpoints, tmp_path, monkeypatch):
    """Float32 on both runtimes: a tiny random model's mask logits crowd around zero, where bfloat16's rounding
    flips pixels that a real model's confident logits do not have (the next test is OpenVINO's default at real
    size)."""
    monkeypatch.setattr(openvino_runtime, "PRECISION", "f32")
    eager = load_segmenter(settings(engine, tiny_checkpoints[engine], tmp_path, "torch"))
    fast = load_segmenter(settings(engine, tiny_checkpoints[engine], tmp_path, runtime))
    assert fast.encoder.runtime == runtime and eager.fingerprint == fast.fingerprint
    rng = np.random.default_rng(0)
    ious = []
    for index in range(4):
        image, _ = disk_image(300, 200, center=tuple(rng.uniform(0.3, 0.7, 2)), seed=index)
        a, b = eager.embed(image), fast.embed(image)
        x, y = a.features.ravel().astype(np.float64), b.features.ravel().astype(np.float64)
        assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) >= 0.999
        for _ in range(10):
            click = Prompt(points=rng.uniform((0, 0), (300, 200), (1, 2)).astype(np.float32), labels=np.array([1]))
            ious.append(iou(eager.decode(a, click).mask, fast.decode(b, click).mask))
    assert len(ious) == 40 and min(ious) >= 0.99


def test_openvino_keeps_mobilesams_masks_at_real_size(tmp_path):
    """The issue's bar for the fast path, on the bench's region-mask checkpoint: real-size MobileSAM, 4 images at
    1024 px, 10 clicks each; OpenVINO in its default precision here (bfloat16 on a CPU with bfloat16 units)
    against eager float32: embedding cosine >= 0.999 and every mask at IoU >= 0.99."""
    from PIL import Image

    from bench.common import bench_images, region_mask_checkpoint

    paths = bench_images(tmp_path / "images", 4, 1024)
    checkpoint = region_mask_checkpoint("vit_t", tmp_path, paths[0])
    config = {"sam_engine": "vit_t", "sam_checkpoint": str(checkpoint), "sam_download": False,
              "model_dir": str(tmp_path / "models"), "embedding_float16": False}
    eager = load_segmenter(Settings(**config, encoder_runtime="torch"))
    fast = load_segmenter(Settings(**config, encoder_runtime="openvino"))
    rng = np.random.default_rng(0)
    ious = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        a, b = eager.embed(image), fast.embed(image)
        x, y = a.features.ravel().astype(np.float64), b.features.ravel().astype(np.float64)
        assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) >= 0.999
        for _ in range(10):
            point = rng.uniform(0.05, 0.95, 2) * (image.shape[1], image.shape[0])
            click = Prompt(points=point[None].astype(np.float32), labels=np.array([1]))
            ious.append(iou(eager.decode(a, click).mask, fast.decode(b, click).mask))
    assert len(ious) == 40 and min(ious) >= 0.99, sorted(ious)[:3]


def test_the_export_is_made_once_and_rebuilt_when_damaged_or_stale(tiny_checkpoints, tmp_path, caplog):
    config = settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "onnx")
    first = load_segmenter(config).encoder.path
    made = first.stat().st_mtime_ns
    assert load_segmenter(config).encoder.path.stat().st_mtime_ns == made  # reused
    first.write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING):
        rebuilt = load_segmenter(config)
    assert "not the file its checks were made on" in caplog.text and first.stat().st_size > 1000
    image, _ = disk_image(160, 120)
    assert rebuilt.embed(image).features.shape == (1, 256, 64, 64)
    sidecar = first.with_suffix(".json")
    stamp = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**stamp, "export": {**stamp["export"], "torch": "0.0"}}))  # another torch's
    before = first.stat().st_mtime_ns
    load_segmenter(config)
    assert first.stat().st_mtime_ns != before and json.loads(sidecar.read_text()) == stamp


def test_a_replaced_export_is_not_trusted_on_its_old_sidecar(tiny_checkpoints, tmp_path, caplog):
    """Overwriting MODEL_DIR/onnx/<fp>.onnx with another valid graph (sidecar kept) changed every mask with no
    word in the log; the sidecar now holds the SHA-256 of the file its checks were made on."""
    mobile = load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "onnx")).encoder.path
    original = mobile.read_bytes()
    other = load_segmenter(settings("vit_b", tiny_checkpoints["vit_b"], tmp_path, "onnx")).encoder.path
    mobile.write_bytes(other.read_bytes())  # a valid ONNX graph, but another model's
    with caplog.at_level(logging.WARNING):
        load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "onnx"))
    assert "not the file its checks were made on" in caplog.text
    assert mobile.read_bytes() == original  # exported again from the checkpoint


def test_a_second_runtime_reuses_the_export_and_checks_it_once(tiny_checkpoints, tmp_path, monkeypatch):
    """OpenVINO runs the graph ONNX Runtime's export made (no second export) after its own check against eager,
    recorded in the sidecar beside ONNX Runtime's; a new runtime version or precision checks again."""
    checks = []
    real_check = encoder_runtime._check
    monkeypatch.setattr(encoder_runtime, "_check", lambda *a: (checks.append(a[3].name), real_check(*a)))
    path = load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "onnx")).encoder.path
    made = path.stat().st_mtime_ns
    assert load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "openvino")).encoder.path == path
    assert path.stat().st_mtime_ns == made and checks == ["onnx", "openvino"]
    checked = json.loads(path.with_suffix(".json").read_text())["checked"]
    assert set(checked) == {"onnx", "openvino"} and checked["openvino"].endswith(("bf16", "f32"))
    load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "openvino"))
    assert checks == ["onnx", "openvino"]  # checked before: not again
    openvino = GRAPH_RUNTIMES["openvino"]
    monkeypatch.setitem(GRAPH_RUNTIMES, "openvino", replace(openvino, version=lambda: "2099.1 f32"))
    load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "openvino"))
    assert checks == ["onnx", "openvino", "openvino"] and path.stat().st_mtime_ns == made


def test_auto_takes_openvino_for_mobilesam_and_onnx_runtime_for_sam(tiny_checkpoints, tmp_path):
    """bench encoder_runtime: OpenVINO kept MobileSAM's masks; its bfloat16 moved ViT-B's below the bar."""
    runtimes = {engine: load_segmenter(settings(engine, tiny_checkpoints[engine], tmp_path, "auto")).encoder.runtime
                for engine in ("vit_t", "vit_b")}
    assert runtimes == {"vit_t": "openvino", "vit_b": "onnx"}


@pytest.mark.parametrize("runtime, package", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_runtime_is_a_clear_error(runtime, package, tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import <package> raises ImportError
    monkeypatch.setattr(openvino_runtime, "_core", openvino_runtime._core.__wrapped__)  # no Core made earlier
    with pytest.raises(ModelUnavailableError, match=f"ENCODER_RUNTIME={runtime} cannot be used: {package} is not"):
        load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, runtime))
    assert "ENCODER_RUNTIME='tensorrt' is not one of" in Settings(encoder_runtime="tensorrt").problems()[0]
    assert all(not Settings(encoder_runtime=name).problems() for name in encoder_runtime.RUNTIMES)  # in step


def test_auto_without_a_runtime_takes_the_next_then_eager(tiny_checkpoints, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(openvino_runtime, "_core", openvino_runtime._core.__wrapped__)
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "auto")).encoder.runtime == "onnx"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level(logging.WARNING):
        segmenter = load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "auto"))
    assert segmenter.encoder is segmenter.model.image_encoder and "using eager PyTorch" in caplog.text
    assert "openvino: openvino is not installed" in caplog.text and "onnx: onnxruntime is not" in caplog.text


class BranchOnInput(torch.nn.Module):
    """Traced on the export's all-zero input, its branch is baked into the graph, which then computes something
    else than eager PyTorch does on any real image (the kind of export the check must catch)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if float(pixels.abs().sum()) == 0:
            return pixels * self.scale * 3 + 1
        return pixels * self.scale * 2


def test_an_export_that_does_not_reproduce_eager_is_never_used(tmp_path, caplog):
    shape = ExportShape((1, 3, 8, 8), ("out",))
    module = BranchOnInput()
    with pytest.raises(ModelUnavailableError, match="does not reproduce eager PyTorch"):
        choose_encoder(module, "branchy-1", "onnx", tmp_path, torch.device("cpu"), shape)
    assert not (tmp_path / "branchy-1.json").exists()  # no sidecar vouches for the graph
    with caplog.at_level(logging.WARNING):
        assert choose_encoder(module, "branchy-1", "auto", tmp_path, torch.device("cpu"), shape, ("onnx",)) is module
    assert "does not reproduce eager PyTorch" in caplog.text and "using eager PyTorch" in caplog.text


def nan_outputs(run):
    """A run whose outputs are NaN: what ONNX Runtime's constant folding made of SAM 2.1's Hiera encoder in some
    sessions."""
    return lambda array: [np.full_like(out, np.nan) for out in run(array)]


def wrap_runtimes(monkeypatch, wrap) -> None:
    """Every graph runtime's run goes through `wrap(run)`."""
    for name, runtime in list(GRAPH_RUNTIMES.items()):
        monkeypatch.setitem(GRAPH_RUNTIMES, name, replace(runtime, load=lambda path, threads, load=runtime.load:
                                                          wrap(load(path, threads))))


def test_an_export_whose_outputs_are_scaled_is_refused(tiny_checkpoints, tmp_path, monkeypatch):
    """Cosine similarity cannot see a scaled output (a wrong normalisation in a graph); the check compares the norms
    too."""
    wrap_runtimes(monkeypatch, lambda run: lambda array: [out * 1.01 for out in run(array)])
    for runtime in GRAPH_RUNTIMES:
        with pytest.raises(ModelUnavailableError, match="does not reproduce eager PyTorch"):
            load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path / runtime, runtime))


def test_sessions_run_without_constant_folding_and_a_non_finite_export_is_refused(tiny_checkpoints, tmp_path,
                                                                                 monkeypatch, caplog):
    import onnxruntime

    made = []
    real = onnxruntime.InferenceSession

    def recording(*args, **kwargs):
        made.append(kwargs.get("disabled_optimizers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path / "a", "onnx"))
    assert made and all(disabled == ["ConstantFolding"] for disabled in made)

    wrap_runtimes(monkeypatch, nan_outputs)
    with pytest.raises(ModelUnavailableError, match="does not reproduce eager PyTorch"):
        load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path / "b", "onnx"))
    with caplog.at_level(logging.WARNING):
        segmenter = load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path / "b", "auto"))
    assert segmenter.encoder is segmenter.model.image_encoder and "using eager PyTorch" in caplog.text
    assert not list((tmp_path / "b").rglob("*.json"))  # no sidecar vouches for the refused graph
