"""Prompt Depth Anything: the image plus a low-resolution metric depth (a phone's or a LiDAR's, or a metric map
the depth job wrote earlier) in, a metric depth at the image's resolution out.

The prompt depth is read through the same URL policy as images: a `.npy` float array in metres, or a 16-bit
PNG in millimetres (scaled by DEPTH_PROMPT_SCALE, as phones and Prompt Depth Anything's own data store it).
"""

from __future__ import annotations

import io
import threading

import cv2
import numpy as np

from backend.core.errors import ImageError
from backend.core.model_cache import ModelCache
from backend.core.pretrained import from_pretrained, resolve_device
from backend.core.settings import Settings
from backend.depth.depth_map import DepthMap
from backend.io.images import read_task_image


def decode_prompt_depth(data: bytes, png_scale: float, where: str) -> np.ndarray:
    """Metres (float32, HxW, zeros where the sensor had no return) from `.npy` (metres) or a 16-bit PNG."""
    if data[:6] == b"\x93NUMPY":
        try:
            depth = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise ImageError(f"prompt depth .npy unreadable ({exc})", where)
    else:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None or decoded.ndim != 2:
            raise ImageError("prompt depth is neither a .npy array nor a one-channel PNG", where)
        depth = decoded.astype(np.float32) * png_scale
    depth = np.squeeze(np.asarray(depth, np.float32))
    if depth.ndim != 2 or min(depth.shape) < 2 or not np.isfinite(depth).all() or depth.max() <= 0:
        raise ImageError(f"prompt depth must be a finite 2-D map with some positive values, got shape {depth.shape}",
                         where)
    return depth


def read_prompt_depth(url: str, settings: Settings, task_id: int | None = None) -> np.ndarray:
    return decode_prompt_depth(read_task_image(url, settings, task_id).data, settings.depth_prompt_scale,
                               f"task {task_id} prompt depth")


class PromptDepthEstimator:
    """transformers' PromptDepthAnythingForDepthEstimation from a hub id or a folder."""

    def __init__(self, name: str, device: str = "cpu"):
        from transformers import AutoImageProcessor, PromptDepthAnythingForDepthEstimation

        def load(path: str):
            return (AutoImageProcessor.from_pretrained(path),
                    PromptDepthAnythingForDepthEstimation.from_pretrained(path).eval())

        self.processor, self.model = from_pretrained(load, name, "prompt depth model", "PROMPT_DEPTH_MODEL",
                                                     "depth-anything/prompt-depth-anything-vits-hf")
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.name = name
        self._lock = threading.Lock()

    def estimate(self, image: np.ndarray, prompt_depth: np.ndarray) -> DepthMap:
        """Metric depth (metres) at the image's size, guided by `prompt_depth` (metres, any low resolution)."""
        import torch

        inputs = self.processor(images=image, prompt_depth=prompt_depth, prompt_scale_to_meter=1.0,
                                return_tensors="pt", input_data_format="channels_last").to(self.device)
        with self._lock, torch.inference_mode():
            output = self.model(**inputs)
        depth = self.processor.post_process_depth_estimation(output, target_sizes=[image.shape[:2]])
        return DepthMap(depth[0]["predicted_depth"].float().cpu().numpy().astype(np.float32), True, self.name)


_estimators: ModelCache[PromptDepthEstimator] = ModelCache(PromptDepthEstimator)


def get_prompt_estimator(settings: Settings) -> PromptDepthEstimator:
    return _estimators.get(settings.prompt_depth_model, settings.device)
