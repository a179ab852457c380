"""Make `segment_anything` and `mobile_sam` importable without torchvision or timm.

They import four torchvision helpers (and MobileSAM four timm helpers) at import time; there is no
CPU torchvision build beside CPU torch. When the real package is missing or broken, the small
stand-ins in `backend/_shims/` take its place. Call `install()` before importing either package.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SHIM_DIR = Path(__file__).parent / "_shims"
_SHIMMED = ("torchvision", "timm")


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # a CUDA-only torchvision raises RuntimeError, not ImportError
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return False


def install() -> list[str]:
    """Put the shims on sys.path for each of torchvision/timm that cannot be imported; return their names."""
    missing = [name for name in _SHIMMED if not _importable(name)]
    if missing and str(SHIM_DIR) not in sys.path:
        sys.path.append(str(SHIM_DIR))
        logger.debug("using import shims for %s", ", ".join(missing))
    return missing
