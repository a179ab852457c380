"""The Label Studio ML backend class: Segment Anything masks from clicks and boxes."""

from __future__ import annotations

import logging
from pathlib import Path

from backend.annotations import AnnotationStore
from backend.errors import InputError
from backend.interactive import get_segmentation
from backend.label_config import parse_label_config
from backend.ml_base import LabelStudioMLBase
from backend.settings import get_settings

logger = logging.getLogger(__name__)


def base_model_version() -> str:
    """Engine and checkpoint name, e.g. 'vit_t-mobile_sam' (cheap: /setup must answer quickly)."""
    settings = get_settings()
    if settings.sam_engine == "grabcut":
        return "grabcut"
    return f"{settings.sam_engine}-{Path(settings.checkpoint_path).stem}"


class SamBackend(LabelStudioMLBase):
    """Interactive segmentation: KeyPointLabels / RectangleLabels prompts in, BrushLabels or PolygonLabels out."""

    def setup(self) -> None:
        self.set("model_version", base_model_version())

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs) -> list[dict]:
        config = parse_label_config(self.label_config)
        if not context or not context.get("result"):
            return []  # batch pre-annotation without prompts: nothing to segment yet
        if len(tasks) != 1:
            raise InputError(f"an interactive request carries exactly one task, got {len(tasks)}", "tasks")
        return [get_segmentation().predict(tasks[0], context, config, self.model_version)]

    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """Keep the team's annotations for training (created/updated saved, deleted removed)."""
        annotation = data.get("annotation") or {}
        store = AnnotationStore(get_settings().model_dir)
        get_segmentation().counters.add("fit_events")
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            if annotation.get("was_cancelled"):
                return {"event": event, "annotation": annotation.get("id"), "stored": False, "reason": "skipped task"}
            path = store.save(self.project_id, data.get("task") or {}, annotation)
            logger.info("project %s: %s annotation %s kept in %s", self.project_id, event, annotation.get("id"), path)
            return {"event": event, "annotation": annotation.get("id"), "stored": True}
        if event in ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED"):
            ids = [a.get("id") for a in data.get("annotations") or [annotation] if isinstance(a, dict)]
            removed = [i for i in ids if isinstance(i, int) and store.delete(self.project_id, i)]
            return {"event": event, "annotations": ids, "removed": removed}
        return {"event": event, "annotations": len(store.load(self.project_id))}
