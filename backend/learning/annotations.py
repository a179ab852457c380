"""The project's annotations as `fit` receives them: one JSON file per annotation, written atomically.

Label Studio's webhook sends each created/updated annotation with its task; `fit` keeps them here
(MODEL_DIR/projects/<id>/annotations/<annotation id>.json) so that training can read the team's
labels without calling back into Label Studio. A deleted annotation removes its file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from backend.core.errors import BackendError, InputError
from backend.core.files import write_atomic

logger = logging.getLogger(__name__)


class TooLargeError(BackendError):
    status = 413


class AnnotationStoreError(BackendError):
    """MODEL_DIR cannot be written (read-only, full): a clear 507, never a 500."""

    status = 507


@dataclass(frozen=True)
class StoredAnnotation:
    task: dict
    annotation: dict
    image_key: str = "image"  # the task data field of the <Image> the annotation labels

    @property
    def result(self) -> list[dict]:
        return list(self.annotation.get("result") or [])


class AnnotationStore:
    """Per-project annotation files under `root`."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def folder(self, project_id: str) -> Path:
        if not str(project_id).isdigit():
            raise InputError(f"project id must be a number, got {project_id!r}", "project")
        return self.root / "projects" / str(project_id) / "annotations"

    def save(self, project_id: str, task: dict, annotation: dict, image_key: str = "image",
             max_bytes: int = 4 << 20, max_count: int = 20000) -> Path:
        """Keep one annotation; TooLargeError when it is over `max_bytes` or the project already keeps
        `max_count` others (training data is bounded: MAX_ANNOTATION_KB, MAX_PROJECT_ANNOTATIONS)."""
        annotation_id = annotation.get("id")
        if not isinstance(annotation_id, int) or isinstance(annotation_id, bool):
            raise InputError("the annotation has no integer 'id'", "annotation")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise InputError(f"annotation {annotation_id} comes without its task data", "task")
        blob = json.dumps({"task": task, "annotation": annotation, "image_key": image_key}).encode()
        if len(blob) > max_bytes:
            raise TooLargeError(f"annotation {annotation_id} is {len(blob) >> 10} KB, more than MAX_ANNOTATION_KB="
                                f"{max_bytes >> 10}; it is not kept for training", "annotation")
        path = self.folder(project_id) / f"{annotation_id}.json"
        if not path.exists() and self.count(project_id) >= max_count:
            raise TooLargeError(f"project {project_id} already keeps MAX_PROJECT_ANNOTATIONS={max_count} "
                                "annotations for training; this one is not kept", "annotation")
        try:
            write_atomic(path, blob)
        except OSError as exc:
            raise AnnotationStoreError(f"annotation {annotation_id} cannot be kept for training in MODEL_DIR "
                                       f"({exc.strerror or type(exc).__name__})", "annotation")
        return path

    def claim_training(self, project_id: str, every: int) -> bool:
        """Whether a fine-tuning is due: at least `every` annotations saved (created or updated) since the last
        claim (every <= 0: a claim is forced, as START_TRAINING does). The count lives in the files, so every
        worker process sees it and restarts keep it; one caller wins a due claim (a file lock)."""
        folder = self.folder(project_id)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder.parent / "last_training_claim"
        with open(folder.parent / "claim.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            since = marker.stat().st_mtime_ns if marker.exists() else 0
            if every > 0:
                changed = 0
                for path in folder.glob("*.json"):
                    with contextlib.suppress(FileNotFoundError):
                        changed += path.stat().st_mtime_ns > since
                if changed < every:
                    return False
            marker.touch()
            os.utime(marker, ns=(time.time_ns(), max(time.time_ns(), since + 1)))
            return True

    def count(self, project_id: str) -> int:
        folder = self.folder(project_id)
        return sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0

    def delete(self, project_id: str, annotation_id: int) -> bool:
        path = self.folder(project_id) / f"{int(annotation_id)}.json"
        existed = path.exists()
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise AnnotationStoreError(f"annotation {annotation_id} cannot be removed from MODEL_DIR "
                                       f"({exc.strerror or type(exc).__name__})", "annotation")
        return existed

    def load(self, project_id: str) -> list[StoredAnnotation]:
        """All stored annotations of a project, oldest annotation id first; unreadable files are skipped."""
        folder = self.folder(project_id)
        if not folder.is_dir():
            return []
        items = []
        for path in sorted(folder.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1):
            try:
                raw = json.loads(path.read_text())
                items.append(StoredAnnotation(raw["task"], raw["annotation"], raw.get("image_key", "image")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("skipping unreadable annotation file %s: %s", path, exc)
        return items
