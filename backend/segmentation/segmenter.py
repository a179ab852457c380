"""The interface every segmentation engine offers: embed an image once, decode many prompts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from backend.segmentation.prompts import Prompt


@dataclass
class Embedding:
    """What the image encoder leaves for the decoder (a set of named arrays), plus the sizes that map prompts
    onto it."""

    features: np.ndarray  # engine specific: SAM image features, or the (downscaled) image for GrabCut
    original_size: tuple[int, int]  # (height, width) of the image as displayed
    input_size: tuple[int, int]  # (height, width) the encoder saw, before padding
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # more named arrays (e.g. SAM 2's high-res maps)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every array, by name ("features" first): what the caches store."""
        return {"features": self.features, **self.extra}

    @property
    def nbytes(self) -> int:
        return int(sum(array.nbytes for array in self.arrays.values()))


T = TypeVar("T")


class PerImageMemo(Generic[T]):
    """What a decoder derives from an embedding once per image (converted tensors, per-image terms), kept for
    the `kept` most recent images: clicks come in bursts on one image. Keyed by the identity of the
    embedding's features array (the cache hands out the same object for one image; the memo holds a
    reference, so the identity cannot be reused while it is kept). Thread-safe."""

    def __init__(self, kept: int = 4):
        self.kept = kept
        self._items: OrderedDict[int, tuple[np.ndarray, T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, embedding: Embedding, make: Callable[[Embedding], T]) -> T:
        key = id(embedding.features)
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry[0] is embedding.features:
                self._items.move_to_end(key)
                return entry[1]
        value = make(embedding)
        with self._lock:
            self._items[key] = (embedding.features, value)
            while len(self._items) > self.kept:
                self._items.popitem(last=False)
        return value


@dataclass
class MaskResult:
    """One mask at the original image size, the model's confidence, and its low-res logits (if any)."""

    mask: np.ndarray  # (height, width) bool
    score: float
    low_res_logits: np.ndarray | None = None  # (1, 256, 256) for SAM: the next click's mask prompt


class Segmenter(Protocol):
    name: str  # engine name, e.g. "vit_t"
    fingerprint: str  # identifies the encoder weights: embeddings are cached under it

    def embed(self, image: np.ndarray) -> Embedding:
        """Run the image encoder on an HxWx3 uint8 RGB image."""
        ...

    def decode(
        self, embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None
    ) -> MaskResult:
        """The best mask for `prompt` (pixels of the original image)."""
        ...
