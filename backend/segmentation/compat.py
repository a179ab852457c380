"""Make `segment_anything` and `mobile_sam` importable without torchvision or timm.

They import four torchvision helpers (and MobileSAM four timm helpers) at import time; there is no
CPU torchvision build beside CPU torch. When the real package is missing or broken, the small
stand-ins in `backend/_shims/` take its place while `install()` imports both packages, and are then
taken off sys.path and sys.modules again: other libraries (transformers) must keep seeing "no
torchvision" and use their own fallbacks. Call `install()` before importing either package.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SHIM_DIR = Path(__file__).parents[1] / "_shims"
_SHIMMED = ("torchvision", "timm")


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # a CUDA-only torchvision raises RuntimeError, not ImportError
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return False


_done: list[str] | None = None


def install() -> list[str]:
    """Import segment_anything and mobile_sam, with shims for whichever of torchvision/timm is missing."""
    global _done
    if _done is not None:
        return _done
    missing = [name for name in _SHIMMED if not _importable(name)]
    if not missing:
        _done = []
        return _done
    sys.path.append(str(SHIM_DIR))
    try:
        importlib.import_module("segment_anything")
        importlib.import_module("mobile_sam")
    finally:
        sys.path.remove(str(SHIM_DIR))
        for key in [k for k in sys.modules if k.split(".")[0] in missing]:
            if str(SHIM_DIR) in (getattr(sys.modules[key], "__file__", None) or ""):
                del sys.modules[key]
    logger.debug("imported SAM with import shims for %s", ", ".join(missing))
    _done = missing
    return _done


def provide_torchvision_ops(module) -> None:
    """Give a transformers modeling module that found no torchvision at import the shim's ops (SAM 3's exemplar
    boxes call `torchvision.ops.roi_align`). The shim is loaded under a private name, never as `torchvision`."""
    if hasattr(module, "torchvision"):
        return
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("_shim_roi_align", SHIM_DIR / "torchvision" / "ops" / "roi_align.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    module.torchvision = SimpleNamespace(ops=SimpleNamespace(roi_align=shim.roi_align))
