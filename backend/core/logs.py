"""Log lines and error texts safe to show: untrusted text cannot forge log lines, server paths stay private."""

from __future__ import annotations

import logging
import os
import re
import uuid

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;()<>/]+/[^\s'\"`,;()<>]*[^\s'\"`,;()<>.]")  # 2+ parts
_LABEL_STUDIO_PATHS = ("/data/", "/storage-data/", "/upload/", "/tasks/")  # URL paths of Label Studio, not files


def escape(text: str) -> str:
    """Control characters (newlines included) as visible escapes: one log record stays one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def install_log_escaping() -> None:
    """Escape the arguments of every log record from now on (the format strings are ours, the arguments may
    carry labels, URLs or error texts from requests)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "escapes", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if isinstance(record.args, tuple):
            record.args = tuple(escape(str(a)) if isinstance(a, (str, BaseException)) else a for a in record.args)
        return record

    factory.escapes = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _named_folders() -> list[tuple[str, str]]:
    """(absolute folder, the setting it comes from), longest first."""
    from backend.core.settings import get_settings

    settings = get_settings()
    named = [(settings.model_dir, "MODEL_DIR"), (settings.image_cache_dir, "IMAGE_CACHE_DIR"),
             (settings.output_dir, "OUTPUT_DIR"), (settings.local_files_document_root, "LOCAL_FILES_DOCUMENT_ROOT"),
             (str(settings.embedding_disk_path), "EMBEDDING_DISK_DIR")]
    if settings.sam_checkpoint:
        named.append((settings.sam_checkpoint, "SAM_CHECKPOINT"))
    folders = [(os.path.realpath(path), name) for path, name in named if path]
    folders += [(os.path.abspath(path), name) for path, name in named if path]
    return sorted(set(folders), key=lambda item: -len(item[0]))


def redact_paths(text: str) -> str:
    """`text` with absolute server paths replaced: below a configured folder by its setting name
    (MODEL_DIR/checkpoints/x.pth), elsewhere by '.../<file name>'."""
    if "/" not in text:
        return text
    folders = _named_folders()

    def replace(match: re.Match) -> str:
        path = match.group()
        if path.startswith(_LABEL_STUDIO_PATHS):
            return path
        for folder, name in folders:
            if path == folder or path.startswith(folder.rstrip("/") + "/"):
                return name + path[len(folder.rstrip("/")):]
        return ".../" + os.path.basename(path.rstrip("/")) if path.strip("/") else path

    return _ABSOLUTE_PATH.sub(replace, text)


def failure_text(error: BaseException, what: str, log: logging.Logger | None = None) -> str:
    """What to tell a caller about `error` while doing `what`: a BackendError's own message; anything else as its
    kind and an incident id, with the traceback in the log under that id (no internals leave the server)."""
    from backend.core.errors import BackendError

    if isinstance(error, BackendError):
        return str(error)
    incident = uuid.uuid4().hex[:12]
    (log or logging.getLogger(__name__)).error("%s failed (incident %s): %s: %s", what, incident,
                                              type(error).__name__, error, exc_info=error)
    return f"internal error {type(error).__name__} (incident {incident} in the server log)"
