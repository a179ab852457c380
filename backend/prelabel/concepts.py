"""SAM 3 concepts: pre-labeling by category names (PRELABEL_DETECTOR=sam3) and the interactive phrase and
exemplar requests. The image's backbone features come from the embedding cache (computed once per image);
every label's phrase is asked of them, and each answer is every matching instance's mask."""

from __future__ import annotations

import time

from backend.core.errors import ModelUnavailableError
from backend.core.label_config import LabelConfig
from backend.core.memory_budget import memory_budget
from backend.core.settings import Settings, get_settings
from backend.io.images import TaskImage, read_task_image
from backend.prelabel.detector import Detection, non_max_suppression
from backend.prelabel.regions import Region, prediction
from backend.prelabel.run import labeled_prompts, log_found
from backend.segmentation.concept_prompts import ConceptRequest
from backend.segmentation.sam3 import ConceptQuery, Instance
from backend.segmentation.service import SegmentationService, get_segmentation, task_image_url

PHRASE_BYTES = 3 << 20  # SAM 3's text encoder and heads per phrase (5000 phrases took 11.1 GB: ~2.2 MB each)


def find_concepts(service: SegmentationService, image: TaskImage, queries: list[ConceptQuery],
                  settings: Settings) -> list[list[Instance]]:
    """Each query's instances on the image, through the concept engine (SAM 3) and the shared cache."""
    concepts = service.concept_service()
    try:
        segmenter = concepts.engine.get()
    except ModelUnavailableError as exc:
        if concepts is service:
            raise
        raise ModelUnavailableError(  # the side model is configured by SAM3_CHECKPOINT, not SAM_CHECKPOINT
            str(exc).replace("SAM_CHECKPOINT", "SAM3_CHECKPOINT").replace("SAM_ENGINE=sam3 model", "SAM 3 model"),
            "SAM3_CHECKPOINT")
    embedding = concepts.embedding(image)
    started = time.perf_counter()
    with memory_budget(settings.memory_budget_mb).reserve(len(queries) * PHRASE_BYTES, f"{len(queries)} phrases"):
        found = segmenter.concepts(embedding, queries, settings.detector_threshold, settings.max_detections)
    service.counters.add("concept_runs", time.perf_counter() - started)
    return found


def _kept(found: list[list[Instance]], labels: list[str], settings: Settings) -> list[tuple[str, Instance]]:
    """Per-label NMS on the boxes, best first, at most MAX_DETECTIONS."""
    detections, instances = [], {}
    for index, query_found in enumerate(found):
        for instance in query_found:
            detection = Detection(instance.box, instance.score, index)
            detections.append(detection)
            instances[id(detection)] = instance
    kept = non_max_suppression(detections, group=lambda d: labels[d.prompt])[: settings.max_detections]
    return [(labels[d.prompt], instances[id(d)]) for d in kept]


def concept_regions(service: SegmentationService, image: TaskImage, config: LabelConfig, settings: Settings,
                    task: dict, project_id: str) -> list[Region]:
    """PRELABEL_DETECTOR=sam3: every label (CATEGORY_ALIASES, PROMPT_FIELD text) as a phrase."""
    pairs = labeled_prompts(config, settings, task)
    found = find_concepts(service, image, [ConceptQuery(text=text) for _, text in pairs], settings)
    kept = _kept(found, [label for label, _ in pairs], settings)
    log_found(task.get("id"), [label for label, _ in kept])
    return [Region(*config.output_for(label), instance.mask, instance.score) for label, instance in kept]


def predict_concepts(task: dict, request: ConceptRequest, config: LabelConfig) -> dict:
    """The prediction for an interactive phrase or exemplar request: every instance found, with its label."""
    settings = get_settings()
    service = get_segmentation()
    url, task_id = task_image_url(task, config)
    image = read_task_image(url, settings, task_id)
    [found] = find_concepts(service, image, [request.to_query()], settings)
    kept = _kept([found], [request.label], settings)
    control, label = config.output_for(request.label)
    regions = [Region(control, label, instance.mask, instance.score) for _, instance in kept]
    log_found(task_id, [label for _ in regions])
    return prediction(regions, service.version_of(service.segmenter_for()), settings.polygon_epsilon)
