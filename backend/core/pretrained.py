"""Loading models from a hub id or a `save_pretrained` folder, on the configured device."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from backend.core.errors import ModelUnavailableError

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """DEVICE: auto (CUDA when present), cpu, cuda, cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def public_name(name: str) -> str:
    """A model's name as labelers may read it (task data, job results): a hub id as it is, a folder on this
    machine by its own name only (no server path)."""
    path = Path(name)
    return path.name if path.is_absolute() or path.exists() else name


def from_pretrained(load: Callable[[str], T], name: str, what: str, setting: str, hub_example: str) -> T:
    """`load(name)`; a model that cannot be loaded gives one error naming the setting and where to get it."""
    try:
        return load(name)
    except (OSError, ValueError, ImportError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        offline = ""
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") and not Path(name).is_dir():
            offline = " HF_HUB_OFFLINE is set, so only folders and models already in the hub cache load."
        raise ModelUnavailableError(
            f"{what} {name!r} could not be loaded ({reason}).{offline} Set {setting} to a folder saved with "
            f"save_pretrained, or to a hub id such as {hub_example} where https://huggingface.co is reachable",
            setting)
