"""The Label Studio ML backend class: Segment Anything masks from clicks and boxes."""

from __future__ import annotations

import logging

from backend.core.errors import BackendError, InputError, StorageError, is_configuration_problem
from backend.core.jobs import get_queue
from backend.core.label_config import parse_label_config
from backend.core.memory_budget import BusyError
from backend.core.settings import get_settings
from backend.core.versions import ModelVersions, model_version, project_model_version
from backend.io.ls_client import note_later
from backend.learning.annotations import AnnotationStore
from backend.prelabel.batch import predict_batch
from backend.prelabel.concepts import predict_concepts
from backend.segmentation.concept_prompts import parse_concept_context
from backend.segmentation.registry import TRAINABLE_DECODER, engine_spec
from backend.segmentation.service import get_segmentation
from backend.serving.ml_base import LabelStudioMLBase
from backend.synthesis.generate import is_generation_annotation

logger = logging.getLogger(__name__)
CLICK = "click"  # the feature name of an interactive request's note on its task


class SamBackend(LabelStudioMLBase):
    """Interactive segmentation: KeyPointLabels / RectangleLabels prompts in, BrushLabels or PolygonLabels out."""

    def setup(self) -> None:
        self.set("model_version", project_model_version(get_settings(), self.project_id))

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs) -> list[dict]:
        config = parse_label_config(self.label_config)
        if not context or not context.get("result"):  # batch pre-annotation: detect the config's categories
            if get_settings().prelabel_mode == "off":
                return []
            return predict_batch(tasks, self.label_config, config, self.project_id)
        if len(tasks) != 1:
            raise InputError(f"an interactive request carries exactly one task, got {len(tasks)}", "tasks")
        concept = parse_concept_context(context, config, get_settings().max_prompt_points)
        if concept is not None:  # a phrase or exemplar boxes: every matching instance (SAM 3)
            return [predict_concepts(tasks[0], concept, config)]
        return [self._click(tasks[0], context, config)]

    def _click(self, task: dict, context: dict, config) -> dict:
        """One click's (or box's) mask. Label Studio 1.23.2's labeling page drops an interactive error (its
        frontend reads only a 200's `data.result`), so a failure is also written on the task (`backend_error`,
        a Data Manager column) and cleared by the next good click."""
        settings = get_settings()
        try:
            prediction = get_segmentation().predict(task, context, config, self.project_id)
        except Exception as exc:
            if not is_configuration_problem(exc) and not isinstance(exc, BusyError):  # the server's, not the task's
                reason = str(exc) if isinstance(exc, BackendError) else f"internal error {type(exc).__name__}"
                note_later(settings, self.project_id, task, CLICK, reason, config.image_key)
            raise
        note_later(settings, self.project_id, task, CLICK, None, config.image_key)
        return prediction

    def fit(self, event: str, data: dict, **kwargs) -> dict:
        """Keep the team's annotations; every TRAIN_EVERY of them (or START_TRAINING) queue a fine-tuning job."""
        try:
            return self._fit(event, data)
        except OSError as exc:  # e.g. a read-only MODEL_DIR: the server's problem, said as such
            raise StorageError(f"cannot keep annotations or training state in MODEL_DIR "
                               f"({exc.strerror or type(exc).__name__})", "MODEL_DIR")

    def _fit(self, event: str, data: dict) -> dict:
        settings = get_settings()
        annotation = data.get("annotation") or {}
        store = AnnotationStore(settings.model_dir)
        get_segmentation().counters.add("fit_events")
        if event in ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED"):
            ids = [a.get("id") for a in data.get("annotations") or [annotation] if isinstance(a, dict)]
            removed = [i for i in ids if isinstance(i, int) and store.delete(self.project_id, i)]
            return {"event": event, "annotations": ids, "removed": removed}
        response: dict = {"event": event}
        if event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            response["annotation"] = annotation.get("id")
            if annotation.get("was_cancelled"):
                return {**response, "stored": False, "reason": "skipped task"}
            if is_generation_annotation(annotation):  # a synthesis request, not an object mask to learn from
                task_id = (data.get("task") or {}).get("id")
                if not self.project_id.isdigit() or not isinstance(task_id, int):
                    raise InputError("a generation annotation needs its project's and task's ids", "/webhook")
                job = get_queue().enqueue("backend.synthesis.generate.run_generation", int(self.project_id), task_id,
                                          annotation.get("id"))
                return {**response, "stored": False, "job": job}
            path = store.save(self.project_id, data.get("task") or {}, annotation, self._image_key(),
                              settings.max_annotation_kb << 10, settings.max_project_annotations)
            logger.info("project %s: %s annotation %s kept in %s", self.project_id, event, annotation.get("id"), path)
            response["stored"] = True
            due = settings.train_every > 0 and store.claim_training(self.project_id, settings.train_every)
        else:  # START_TRAINING (the "Start training" button)
            due = store.claim_training(self.project_id, 0)
        if due and engine_spec(settings.sam_engine).can(TRAINABLE_DECODER):
            response["job"] = get_queue().enqueue("backend.learning.training.train_project", self.project_id)
        return response

    def on_event(self, event: str, data: dict) -> dict | None:
        """Other webhook events: TASKS_CREATED precomputes the new images' embeddings (PRECOMPUTE_ON_IMPORT)."""
        if event != "TASKS_CREATED" or not get_settings().precompute_on_import:
            return None
        key = self._image_key()
        urls = [t["data"][key] for t in data.get("tasks") or [] if isinstance(t, dict)
                and isinstance(t.get("data"), dict) and isinstance(t["data"].get(key), str)]
        if not urls:
            return {"event": event, "images": 0}
        job = get_queue().enqueue("backend.segmentation.service.precompute_embeddings", urls)
        return {"event": event, "images": len(urls), "job": job}

    def versions(self) -> list[str]:
        """The base model and the project's fine-tuned versions, oldest first."""
        settings = get_settings()
        if not self.project_id.isdigit():
            return [model_version(settings)]
        tuned = ModelVersions(settings.model_dir, self.project_id).list()
        return [model_version(settings)] + [model_version(settings, v.name) for v in tuned]

    def _image_key(self) -> str:
        try:
            return parse_label_config(self.label_config).image_key
        except InputError:
            return "image"
