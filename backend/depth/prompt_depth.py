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
from PIL import Image, UnidentifiedImageError

from backend.core.errors import ImageError
from backend.core.model_cache import ModelCache
from backend.core.pretrained import from_pretrained, resolve_device
from backend.core.settings import Settings
from backend.depth.depth_map import DepthMap
from backend.io.images import read_task_image


def decode_prompt_depth(data: bytes, png_scale: float, where: str, max_pixels: int = 200_000_000,
                        max_memory_mb: int = 1024) -> np.ndarray:
    """Metres (float32, HxW, zeros where the sensor had no return) from `.npy` (metres) or a 16-bit PNG, within the
    image limits (MAX_IMAGE_PIXELS, MAX_IMAGE_MEMORY_MB), checked on the header before anything is decoded."""
    if data[:6] == b"\x93NUMPY":
        buffer = io.BytesIO(data)
        try:
            version = np.lib.format.read_magic(buffer)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} is not read")
            shape, _, dtype = read_header(buffer)
        except (ValueError, SyntaxError, TypeError) as exc:
            raise ImageError(f"prompt depth .npy unreadable ({exc})", where)
        if dtype.kind not in "fiu" or dtype.fields is not None:
            raise ImageError(f"prompt depth .npy must hold numbers (metres), got dtype {dtype}", where)
        _check_size(shape, dtype.itemsize, where, max_pixels, max_memory_mb)
        try:
            depth = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ImageError(f"prompt depth .npy unreadable ({exc})", where)
    else:
        Image.MAX_IMAGE_PIXELS = max_pixels  # as io/images.py: PIL's own guard at the same limit
        try:
            with Image.open(io.BytesIO(data)) as header:  # reads the size only
                _check_size((header.height, header.width), 2, where, max_pixels, max_memory_mb)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"prompt depth is larger than MAX_IMAGE_PIXELS ({exc})", where)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, NotImplementedError):
            pass  # not an image PIL knows: cv2 says so below
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None or decoded.ndim != 2:
            raise ImageError("prompt depth is neither a .npy array nor a one-channel PNG", where)
        depth = decoded.astype(np.float32) * png_scale
    depth = np.squeeze(np.asarray(depth, np.float32))
    if depth.ndim != 2 or min(depth.shape) < 2 or not np.isfinite(depth).all() or depth.max() <= 0:
        raise ImageError(f"prompt depth must be a finite 2-D map with some positive values, got shape {depth.shape}",
                         where)
    return depth


def _check_size(shape: tuple, itemsize: int, where: str, max_pixels: int, max_memory_mb: int) -> None:
    """ImageError when a map of `shape` has more than `max_pixels` values or its decoding (the stored values
    plus the float32 copy and its resize) needs more than `max_memory_mb`."""
    pixels = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if pixels > max_pixels:
        raise ImageError(f"prompt depth of shape {tuple(shape)} is larger than MAX_IMAGE_PIXELS={max_pixels}", where)
    needed_mb = pixels * (itemsize + 4 * 3) / (1 << 20)
    if needed_mb > max_memory_mb:
        raise ImageError(f"decoding this prompt depth of shape {tuple(shape)} needs about {needed_mb:.0f} MB, more "
                         f"than MAX_IMAGE_MEMORY_MB={max_memory_mb}", where)


def read_prompt_depth(url: str, settings: Settings, task_id: int | None = None) -> np.ndarray:
    return decode_prompt_depth(read_task_image(url, settings, task_id).data, settings.depth_prompt_scale,
                               f"task {task_id} prompt depth", settings.max_image_pixels, settings.max_image_memory_mb)


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
