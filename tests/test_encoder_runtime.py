"""ENCODER_RUNTIME: the ONNX Runtime encoder gives SAM's features and masks; its export is made once per
checkpoint, rebuilt when damaged or stale, and a missing runtime is a clear error (or, with auto, eager)."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch

from backend.core.errors import ModelUnavailableError
from backend.core.settings import Settings
from backend.segmentation import encoder_runtime
from backend.segmentation.encoder_runtime import ExportShape, choose_encoder
from backend.segmentation.prompts import Prompt
from backend.segmentation.registry import load_segmenter
from tests.helpers import TINY_ARCH, disk_image, iou


def settings(engine, checkpoint, tmp_path, runtime):
    return Settings(sam_engine=engine, sam_checkpoint=str(checkpoint), sam_download=False,
                    sam_arch_overrides=json.dumps(TINY_ARCH[engine]), model_dir=str(tmp_path / "models"),
                    encoder_runtime=runtime, embedding_float16=False)


@pytest.mark.parametrize("engine", ["vit_t", "vit_b"])
def test_onnx_encoder_gives_the_eager_features_and_masks(engine, tiny_checkpoints, tmp_path):
    eager = load_segmenter(settings(engine, tiny_checkpoints[engine], tmp_path, "torch"))
    fast = load_segmenter(settings(engine, tiny_checkpoints[engine], tmp_path, "onnx"))
    assert type(fast.encoder).__name__ == "OnnxEncoder" and eager.fingerprint == fast.fingerprint
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


def test_the_export_is_made_once_and_rebuilt_when_damaged_or_stale(tiny_checkpoints, tmp_path, caplog):
    config = settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "onnx")
    first = load_segmenter(config).encoder.path
    made = first.stat().st_mtime_ns
    assert load_segmenter(config).encoder.path.stat().st_mtime_ns == made  # reused
    first.write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING):
        rebuilt = load_segmenter(config)
    assert "cannot be loaded" in caplog.text and first.stat().st_size > 1000
    image, _ = disk_image(160, 120)
    assert rebuilt.embed(image).features.shape == (1, 256, 64, 64)
    sidecar = first.with_suffix(".json")
    stamp = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**stamp, "torch": "0.0"}))  # made by another torch: stale
    before = first.stat().st_mtime_ns
    load_segmenter(config)
    assert first.stat().st_mtime_ns != before and json.loads(sidecar.read_text()) == stamp


def test_a_missing_runtime_is_a_clear_error_or_with_auto_eager(tiny_checkpoints, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ModelUnavailableError, match="ENCODER_RUNTIME=onnx cannot be used: onnxruntime is not"):
        load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "onnx"))
    with caplog.at_level(logging.WARNING):
        segmenter = load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path, "auto"))
    assert segmenter.encoder is segmenter.model.image_encoder and "using eager PyTorch" in caplog.text
    assert "ENCODER_RUNTIME='tensorrt' is not one of" in Settings(encoder_runtime="tensorrt").problems()[0]


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
        assert choose_encoder(module, "branchy-1", "auto", tmp_path, torch.device("cpu"), shape) is module
    assert "does not reproduce eager PyTorch" in caplog.text and "using eager PyTorch" in caplog.text


class NaNSession:
    """An ONNX Runtime session whose outputs are NaN: what constant folding made of SAM 2.1's Hiera encoder in
    some sessions."""

    def __init__(self, session):
        self.session = session

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, names, feeds):
        return [np.full_like(out, np.nan) for out in self.session.run(names, feeds)]


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

    real_session = encoder_runtime._session
    monkeypatch.setattr(encoder_runtime, "_session", lambda path: NaNSession(real_session(path)))
    with pytest.raises(ModelUnavailableError, match="does not reproduce eager PyTorch"):
        load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path / "b", "onnx"))
    with caplog.at_level(logging.WARNING):
        segmenter = load_segmenter(settings("vit_t", tiny_checkpoints["vit_t"], tmp_path / "b", "auto"))
    assert segmenter.encoder is segmenter.model.image_encoder and "using eager PyTorch" in caplog.text
    assert not list((tmp_path / "b").rglob("*.json"))  # no sidecar vouches for the refused graph
