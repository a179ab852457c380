"""A job for the worker tests: 'loads a model' once per process, as the detector and segmenter caches do."""

from __future__ import annotations

import functools
import os

LOADS = {"count": 0}


@functools.cache
def _model() -> str:
    LOADS["count"] += 1
    return "model"


def load_once() -> dict:
    _model()
    return {"pid": os.getpid(), "loads": LOADS["count"]}
