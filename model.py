"""The Label Studio ML backend class: Segment Anything masks from clicks and boxes."""

from __future__ import annotations

import logging
from pathlib import Path

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
        annotation = data.get("annotation") or {}
        logger.info("project %s: %s for annotation %s", self.project_id, event, annotation.get("id"))
        return {"event": event, "annotation": annotation.get("id")}
