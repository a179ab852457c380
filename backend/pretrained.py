"""Loading models from a hub id or a `save_pretrained` folder, on the configured device."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from .errors import ModelUnavailableError

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """DEVICE: auto (CUDA when present), cpu, cuda, cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def from_pretrained(load: Callable[[str], T], name: str, what: str, setting: str, hub_example: str) -> T:
    """`load(name)`; a model that cannot be loaded gives one error naming the setting and where to get it."""
    try:
        return load(name)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"{what} {name!r} could not be loaded ({str(exc).splitlines()[0][:200]}). Set {setting} to a folder "
            f"saved with save_pretrained, or to a hub id such as {hub_example} where https://huggingface.co is "
            "reachable", setting)
