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
    # ahead of site-packages when torchvision is missing: an installed timm (unimportable without torchvision)
    # must not be picked up through the torchvision shim here; MobileSAM gets the timm shim
    sys.path.insert(0 if "torchvision" in missing else len(sys.path), str(SHIM_DIR))
    try:
        importlib.import_module("segment_anything")
        importlib.import_module("mobile_sam")
    finally:
        sys.path.remove(str(SHIM_DIR))
        for key in [k for k in sys.modules if k.split(".")[0] in missing and _from_shim(sys.modules[k])]:
            del sys.modules[key]
    logger.debug("imported SAM with import shims for %s", ", ".join(missing))
    _done = missing
    return _done


def import_timm():
    """The real timm (OmDet-Turbo's Swin backbone is a timm model). Without torchvision, the shim supplies the
    names timm imports at load time (none is called for inference) and leaves sys.modules again afterwards."""
    install()  # segment_anything / mobile_sam first, with whichever shims they need
    if _importable("timm") and not _from_shim(sys.modules["timm"]):
        return sys.modules["timm"]
    sys.path.append(str(SHIM_DIR))
    try:
        timm = importlib.import_module("timm")
    finally:
        sys.path.remove(str(SHIM_DIR))
        for key in [k for k in sys.modules if k.split(".")[0] == "torchvision" and _from_shim(sys.modules[k])]:
            del sys.modules[key]
    if _from_shim(timm):
        del sys.modules["timm"]
        raise ImportError("timm is not installed (OmDet-Turbo's backbone needs it): "
                           "pip install --no-deps -r requirements-no-deps.txt")
    logger.debug("imported timm %s with the torchvision import shim", timm.__version__)
    return timm


def provide_timm() -> None:
    """transformers' TimmBackbone (OmDet-Turbo's Swin) refuses to run when torchvision is missing, although timm
    inference does not need it: hand its module the real timm and skip only that availability check."""
    from transformers.models.timm_backbone import modeling_timm_backbone as module

    if getattr(module, "timm", None) is not None:
        return
    module.timm = import_timm()
    check = module.requires_backends

    def requires_backends(obj, backends) -> None:
        check(obj, [name for name in ([backends] if isinstance(backends, str) else backends) if name != "timm"])

    module.requires_backends = requires_backends


def _from_shim(module) -> bool:
    return str(SHIM_DIR) in (getattr(module, "__file__", None) or "")


def provide_torchvision_ops(module, *names: str) -> None:
    """Give a transformers module that found no torchvision at import the shim's ops: as `module.torchvision.ops`
    (SAM 3's exemplar boxes call `torchvision.ops.roi_align`), or each of `names` as a module attribute
    (OmDet-Turbo's post-processing imported `batched_nms`). The shim is loaded under a private name, never as
    `torchvision`, so other libraries keep seeing no torchvision."""
    from types import SimpleNamespace

    if names:
        for name in names:
            if not hasattr(module, name):
                setattr(module, name, getattr(_shim_ops(), name))
    elif not hasattr(module, "torchvision"):
        module.torchvision = SimpleNamespace(ops=_shim_ops())


def _shim_ops():
    """The shim's `torchvision.ops` package (roi_align, nms, batched_nms, box_area) under a private name."""
    import importlib.util

    name = "_backend_shim_torchvision_ops"
    if name not in sys.modules:
        folder = SHIM_DIR / "torchvision" / "ops"
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    return sys.modules[name]
