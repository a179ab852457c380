"""ENCODER_RUNTIME: the ONNX Runtime encoder gives SAM's features and masks; its export is made once per
checkpoint, rebuilt when damaged or stale, and a missing runtime is a clear error (or, with auto, eager)."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

from backend.core.errors import ModelUnavailableError
from backend.core.settings import Settings
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
