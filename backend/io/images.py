"""Reading task images: Label Studio uploads, local and cloud storage, plain URLs, data: URIs, local files.

Every download goes through `download.Download` (host allow-list, byte cap, one deadline); downloads
are kept in IMAGE_CACHE_DIR under the full SHA-256 of their URL, written atomically and LRU-bounded
(IMAGE_CACHE_MB). Local paths are read only below LOCAL_FILES_DOCUMENT_ROOT after resolving symlinks.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.core.errors import ImageError, InputError
from backend.core.files import BoundedFolder
from backend.core.memory_budget import MemoryBudget, memory_budget
from backend.core.settings import Settings
from backend.core.single_flight import SingleFlight
from backend.io.download import Download, UrlRefusedError, short_url

logger = logging.getLogger(__name__)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
_LABEL_STUDIO_PREFIXES = ("/data/", "data/upload", "/upload", "upload/", "/storage-data/", *_CLOUD_PREFIXES)
# Peak bytes per pixel of decoding to HxWx3 RGB (PIL's image, conversions, numpy copies), by PIL mode; measured
# on 16 MP PNGs (RGB 18.1, RGBA 26.1, L and P 12.1, I;16 12.1) plus ~10 %: tests/test_images.py checks each
# against a measured peak.
DECODE_BYTES_PER_PIXEL = {"RGB": 20, "RGBA": 29, "LA": 29, "PA": 29, "La": 29, "RGBa": 29, "L": 14, "P": 14,
                          "1": 14, "I;16": 14, "I;16L": 14, "I;16B": 14, "I;16N": 14, "I": 20, "F": 30}
DEFAULT_BYTES_PER_PIXEL = 24  # any other mode (CMYK, YCbCr, LAB, ...)
MIN_IMAGE_PIXELS = 64  # smaller images have nothing to segment (a 1x1 image gave a mask of score 0, no word)


def decode_bytes(img: Image.Image) -> int:
    """Estimated peak memory of decoding `img` (opened, not yet loaded) to RGB."""
    mode = "RGBA" if img.mode == "P" and "transparency" in img.info else img.mode
    return img.width * img.height * DECODE_BYTES_PER_PIXEL.get(mode, DEFAULT_BYTES_PER_PIXEL)


@dataclass(frozen=True)
class TaskImage:
    """The bytes of one task image, its content key and where it came from."""

    data: bytes
    source: str
    cache: BoundedFolder | None = field(default=None, compare=False, repr=False)  # where `data` was kept
    cache_key: str = ""
    _decoded: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def key(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def pixels(self, settings: Settings) -> np.ndarray:
        """`decode` within the settings' limits (MAX_IMAGE_PIXELS, MAX_IMAGE_MEMORY_MB, and the worker's
        MEMORY_BUDGET_MB across concurrent requests), for the models: an image too small to segment is refused."""
        array = self.decode(settings.max_image_pixels, settings.max_image_memory_mb,
                            memory_budget(settings.memory_budget_mb))
        height, width = array.shape[:2]
        if height * width < MIN_IMAGE_PIXELS:
            raise ImageError(f"image is {width}x{height} pixels: too small to segment (fewer than {MIN_IMAGE_PIXELS} "
                             "pixels)", self.source)
        return array

    def decode(self, max_pixels: int = 200_000_000, max_memory_mb: int = 1024,
               budget: MemoryBudget | None = None) -> np.ndarray:
        """HxWx3 uint8 RGB, EXIF orientation applied (as the browser shows it); read-only, decoded once
        (the detector and the encoder of a pre-labeled task share it). The decoding's estimated peak is
        reserved in `budget` while it runs."""
        if max_pixels not in self._decoded:
            try:
                array = self._decode(max_pixels, max_memory_mb, budget)
            except ImageError:
                if self.cache is not None:  # a cached download that does not decode is fetched again next time
                    self.cache.discard(self.cache_key)
                raise
            array.setflags(write=False)
            self._decoded[max_pixels] = array
        return self._decoded[max_pixels]

    def _decode(self, max_pixels: int, max_memory_mb: int, budget: MemoryBudget | None) -> np.ndarray:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with Image.open(io.BytesIO(self.data)) as img:
                if img.width * img.height > max_pixels:
                    raise Image.DecompressionBombError(f"{img.width}x{img.height} pixels")
                needed = decode_bytes(img)
                if needed > max_memory_mb << 20:
                    raise ImageError(f"decoding this {img.width}x{img.height} image needs about {needed >> 20} MB, "
                                     f"more than MAX_IMAGE_MEMORY_MB={max_memory_mb}", self.source)
                with budget.reserve(needed, f"decoding a {img.width}x{img.height} image") if budget else \
                        contextlib.nullcontext():
                    array = browser_rgb(img)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"image is larger than MAX_IMAGE_PIXELS={max_pixels}: {exc}", self.source)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, NotImplementedError) as exc:
            raise ImageError(f"not a readable image ({exc})", self.source)
        if array.size == 0:
            raise ImageError("image is empty (0 pixels)", self.source)
        return array


def browser_rgb(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB as a browser shows the image: EXIF orientation applied, 16-bit samples scaled (not
    clipped) to 8 bits, transparency composited over white (Label Studio's page), CMYK, palette and
    grayscale converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grayscale (PIL opens PNGs as I;16 or I)
        values = np.asarray(img, dtype=np.int64 if img.mode == "I" else np.uint32)  # integers: no float64 copy
        np.clip(values, 0, 65535, out=values)
        values += 128
        values //= 257  # round(v / 257) for integers (v / 257 is never exactly k + 0.5)
        return np.repeat(values.astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        return np.repeat(np.clip(np.round(values), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _decode_data_uri(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ImageError("only base64 data: URIs are supported", short_url(url))
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"broken base64 in data: URI ({exc})", short_url(url))


def read_below_root(path: str, root: str, shown: str) -> bytes:
    """The file at `path` (absolute, or relative to `root`) if its real path, symlinks resolved, lies below
    the real path of `root`; ImageError otherwise."""
    if not root or os.path.realpath(root) == os.path.sep:
        raise ImageError("local file paths are read only below LOCAL_FILES_DOCUMENT_ROOT (now "
                         f"{'/' if root else 'unset'}); serve the file through Label Studio storage instead", shown)
    try:
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(real_root / path.lstrip("/") if not os.path.isabs(path) else path))
        if not real.is_relative_to(real_root):
            raise ImageError("the path leads outside LOCAL_FILES_DOCUMENT_ROOT", shown)
        return real.read_bytes()
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise InputError(f"not a valid file path ({exc})", shown)
    except OSError as exc:
        raise ImageError(f"cannot read local file ({exc.strerror or type(exc).__name__})", shown)


@lru_cache(maxsize=4)
def image_cache(folder: str, max_mb: int) -> BoundedFolder:
    """The process's view of the download cache folder (one per setting, so its counters add up)."""
    return BoundedFolder(folder, max_mb << 20, ".img")


def _label_studio_url(path: str, settings: Settings, shown: str) -> str:
    if not settings.label_studio_url:
        raise ImageError("this image is served by Label Studio: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) so "
                         "that the backend can fetch it", shown)
    return settings.label_studio_url.rstrip("/") + "/" + path.lstrip("/")


def _label_studio_sources(url: str, task_id: int | None, settings: Settings) -> list[str]:
    """The Label Studio URLs to try, in order, for a Label Studio media reference."""
    shown = short_url(url)
    if url.startswith(_CLOUD_PREFIXES):
        if task_id is None:
            raise InputError("a cloud storage URI needs the task id to be presigned by Label Studio", shown)
        fileuri = base64.urlsafe_b64encode(url.encode()).decode()
        return [_label_studio_url(f"/tasks/{int(task_id)}/presign/?fileuri={fileuri}", settings, shown)]
    path = url if url.startswith("/") else "/" + url
    if path.startswith("/upload"):
        path = "/data" + path
    if path.startswith("/data/upload/"):  # the storage proxy first (cloud-backed uploads), then the plain path
        filepath = path.removeprefix("/data/")
        return [_label_studio_url(f"/storage-data/uploaded/?filepath={filepath}", settings, shown),
                _label_studio_url(path, settings, shown)]
    return [_label_studio_url(path, settings, shown)]


_DOWNLOADS = SingleFlight()  # one download per URL in flight in a process: a prefetch and the task's turn share it


def _fetch(url: str, task_id: int | None, settings: Settings) -> TaskImage:
    """The image at an http(s) or Label Studio storage URL: from the image cache, else downloaded once (a read
    of a URL that is being downloaded in this process gets that download's bytes or its error)."""
    cache = image_cache(settings.image_cache_dir, settings.image_cache_mb)
    key = url

    def download() -> bytes:
        data = cache.read(key) or _download(url, task_id, settings)  # cached by a run that just ended
        if data:
            cache.write(key, data)
        return data

    data = cache.read(key) or _DOWNLOADS.run(key, download)
    return TaskImage(data=data, source=short_url(url), cache=cache, cache_key=key)


def _download(url: str, task_id: int | None, settings: Settings) -> bytes:
    sources = [url] if url.startswith(("http://", "https://")) else _label_studio_sources(url, task_id, settings)
    download = Download(settings)
    first_error: ImageError | None = None
    for source in sources:
        try:
            return download.fetch(source)
        except ImageError as exc:  # the first source's error says most (e.g. 401 from the storage proxy)
            first_error = first_error or exc
    raise first_error


def _local_storage_path(url: str) -> str:
    values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("d")
    if not values or not values[-1]:
        raise InputError("a Local Storage URL needs ?d=<path>", short_url(url))
    return values[-1]


def read_task_image(url: object, settings: Settings, task_id: int | None = None) -> TaskImage:
    """Read the image a task points at. Raises InputError for a bad value, ImageError for a bad image,
    UrlRefusedError for a URL outside the download policy."""
    if not isinstance(url, str) or not url.strip():
        raise InputError(f"image field is empty or not a string: {url!r}", f"task {task_id}")
    url = url.strip()
    if url.startswith("data:"):
        image = TaskImage(data=_decode_data_uri(url), source=short_url(url))
    elif url.startswith("/data/local-files") and settings.local_files_document_root:
        path = _local_storage_path(url)
        image = TaskImage(read_below_root(path, settings.local_files_document_root, short_url(url)), short_url(url))
    elif url.startswith(("http://", "https://", *_LABEL_STUDIO_PREFIXES)):
        image = _fetch(url, task_id, settings)
    elif _SCHEME.match(url) and not url.startswith("file://"):
        raise UrlRefusedError("only http://, https://, data: and Label Studio storage URLs are read", short_url(url))
    else:
        image = TaskImage(read_below_root(url.removeprefix("file://"), settings.local_files_document_root,
                                          short_url(url)), short_url(url))
    if not image.data:
        raise ImageError("image file is empty (0 bytes)", short_url(url))
    return image
