"""The one model cache behind SAM, detector, depth and inpainting models."""

import threading
import time

import pytest

from backend.core.errors import ModelUnavailableError
from backend.core.model_cache import ModelCache
from backend.core.settings import Settings
from backend.depth import estimate as depth


def test_keeps_the_most_recent_models_and_loads_each_once():
    calls = []
    cache = ModelCache(lambda name: calls.append(name) or object(), keep=2)
    a = cache.get("a")
    assert cache.get("a") is a and cache.loaded("b") is None
    cache.get("b")
    cache.get("a")  # a is now the most recent
    cache.get("c")  # evicts b
    assert cache.loaded("a") is a and cache.loaded("b") is None
    assert calls == ["a", "b", "c"]


def test_a_failed_load_is_not_retried_until_the_pause_is_over():
    calls = []

    def load(name):
        calls.append(name)
        if len(calls) < 3:
            raise ModelUnavailableError(f"{name} missing", "SETTING")
        return name

    cache = ModelCache(load)
    for _ in range(2):
        with pytest.raises(ModelUnavailableError, match="x missing"):
            cache.get("x")
    assert calls == ["x"] and "x missing" in str(cache.failure("x"))
    cache.retry_after = 0.0
    with pytest.raises(ModelUnavailableError):
        cache.get("x")
    assert cache.get("x") == "x" and cache.failure("x") is None
    assert calls == ["x", "x", "x"]


def test_a_missing_depth_model_fails_once_per_pause_in_a_bulk_run(tmp_path, monkeypatch):
    monkeypatch.setattr(depth, "_estimators", ModelCache(depth.DepthEstimator))
    loads = []
    original = depth.DepthEstimator.__init__

    def counting(self, *args):
        loads.append(args)
        original(self, *args)

    monkeypatch.setattr(depth.DepthEstimator, "__init__", counting)
    settings = Settings(depth_model=str(tmp_path / "no-model"))
    for _ in range(3):
        with pytest.raises(ModelUnavailableError, match="DEPTH_MODEL"):
            depth.get_estimator(settings)
    assert len(loads) == 1


def test_status_answers_while_a_long_load_runs():
    started, release = threading.Event(), threading.Event()

    def slow_load():
        started.set()
        release.wait(10)
        return "model"

    cache = ModelCache(slow_load)
    loader = threading.Thread(target=cache.get)
    loader.start()
    assert started.wait(10)
    began = time.monotonic()
    assert cache.loaded() is None and cache.failure() is None  # /health does not wait for the load
    assert cache.loading()
    assert time.monotonic() - began < 1
    release.set()
    loader.join(10)
    assert cache.loaded() == "model" and not cache.loading()
