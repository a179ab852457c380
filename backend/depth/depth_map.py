"""A depth map as the depth models return it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DepthMap:
    depth: np.ndarray  # float32, the image's size
    metric: bool  # metres (True) or relative inverse depth (False)
    model: str
