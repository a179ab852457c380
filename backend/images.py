"""Reading task images: Label Studio uploads, local and cloud storage, plain URLs, data: URIs, local files."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path, http_session
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError
from .settings import Settings

logger = logging.getLogger(__name__)

_LABEL_STUDIO_PREFIXES = ("/data/", "data/upload", "/upload", "upload/", "/storage-data/", "s3:", "gs:", "azure-blob:")


class _TimeoutSession(requests.Session):
    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


@dataclass(frozen=True)
class TaskImage:
    """The bytes of one task image, its content key and where it came from."""

    data: bytes
    source: str
    _decoded: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def key(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def decode(self, max_pixels: int = 200_000_000) -> np.ndarray:
        """HxWx3 uint8 RGB, EXIF orientation applied (as the browser shows it); read-only, decoded once
        (the detector and the encoder of a pre-labeled task share it)."""
        if max_pixels not in self._decoded:
            array = self._decode(max_pixels)
            array.setflags(write=False)
            self._decoded[max_pixels] = array
        return self._decoded[max_pixels]

    def _decode(self, max_pixels: int) -> np.ndarray:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with Image.open(io.BytesIO(self.data)) as img:
                if img.width * img.height > max_pixels:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                img = ImageOps.exif_transpose(img)
                array = np.asarray(img.convert("RGB"))
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image is larger than MAX_IMAGE_PIXELS={max_pixels}: {exc}", self.source)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"not a readable image ({exc})", self.source)
        if array.size == 0:
            raise ImageError("image is empty (0 pixels)", self.source)
        return array


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:100] + "..." + url[-15:]


def _decode_data_uri(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ImageError("only base64 data: URIs are supported", _short(url))
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"broken base64 in data: URI ({exc})", _short(url))


def _read_local_file(url: str, settings: Settings) -> bytes:
    path = Path(url.removeprefix("file://")).resolve()
    root = settings.local_files_document_root
    if not root or not path.is_relative_to(Path(root).resolve()):
        raise ImageError(
            "local file paths are read only below LOCAL_FILES_DOCUMENT_ROOT "
            f"(now {root or 'unset'}); serve the file through Label Studio storage instead",
            _short(url),
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read local file ({exc.strerror or exc})", _short(url))


def _fetch(url: str, task_id: int | None, settings: Settings) -> bytes:
    os.makedirs(settings.image_cache_dir, exist_ok=True)
    try:
        with http_session(_TimeoutSession(settings.download_timeout)):
            path = get_local_path(
                url,
                cache_dir=settings.image_cache_dir,
                hostname=settings.label_studio_url or None,
                access_token=settings.label_studio_api_key or None,
                task_id=task_id,
            )
        return Path(path).read_bytes()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " (check LABEL_STUDIO_API_KEY)" if status in (401, 403) else ""
        raise ImageError(f"download failed with HTTP {status}{hint}", _short(url))
    except requests.RequestException as exc:
        raise ImageError(f"storage unreachable: {type(exc).__name__}: {exc}", _short(url))
    except (FileNotFoundError, ValueError) as exc:
        raise ImageError(str(exc), _short(url))
    except Exception as exc:  # the SDK raises bare Exception for e.g. a cloud URI without task id
        raise ImageError(f"cannot resolve image URL: {exc}", _short(url))


def read_task_image(url: object, settings: Settings, task_id: int | None = None) -> TaskImage:
    """Read the image a task points at. Raises InputError for a bad value, ImageError for a bad image."""
    if not isinstance(url, str) or not url.strip():
        raise InputError(f"image field is empty or not a string: {url!r}", f"task {task_id}")
    url = url.strip()
    if url.startswith("data:"):
        data = _decode_data_uri(url)
    elif url.startswith(("http://", "https://")) or url.startswith(_LABEL_STUDIO_PREFIXES):
        data = _fetch(url, task_id, settings)
    else:
        data = _read_local_file(url, settings)
    if not data:
        raise ImageError("image file is empty (0 bytes)", _short(url))
    return TaskImage(data=data, source=_short(url))
