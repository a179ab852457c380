"""One interactive request: task + context in, Label Studio prediction out. Shared by /predict and evaluation."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from backend.core.errors import BackendError, InputError
from backend.core.label_config import LabelConfig
from backend.core.model_cache import ModelCache
from backend.core.settings import Settings
from backend.core.single_flight import SingleFlight
from backend.core.versions import ModelVersions, model_version
from backend.io.download import short_url
from backend.io.images import TaskImage, read_task_image
from backend.segmentation.embedding_cache import EmbeddingCache, cache_key, make_cache
from backend.segmentation.masks import mask_results
from backend.segmentation.prompts import ContextPrompt, Prompt, parse_context
from backend.segmentation.registry import CONCEPTS, TRAINABLE_DECODER, SegmenterHolder
from backend.segmentation.segmenter import Embedding, MaskResult, Segmenter

logger = logging.getLogger(__name__)


@dataclass
class Counters:
    """Process counters for /metrics."""

    counts: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, seconds: float | None = None) -> None:
        with self.lock:
            self.counts[name] += 1
            if seconds is not None:
                self.seconds[name] += seconds

    def snapshot(self) -> dict:
        with self.lock:
            return {"counts": dict(self.counts), "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


def task_image_url(task: object, config: LabelConfig) -> tuple[str, int | None]:
    """The image URL of a task; InputError naming the task when the field is missing."""
    if not isinstance(task, dict):
        raise InputError(f"a task must be an object, got {type(task).__name__}", "tasks")
    task_id = task.get("id")
    data = task.get("data")
    if not isinstance(data, dict) or config.image_key not in data:
        raise InputError(f"task data has no field '{config.image_key}' (the <Image> value)", f"task {task_id}")
    return data[config.image_key], task_id


class SegmentationService:
    """Embeds each image once (cache), decodes every prompt, encodes the mask as the config asks."""

    def __init__(self, settings: Settings, cache: EmbeddingCache | None = None):
        self.settings = settings
        self.engine = SegmenterHolder(settings)
        self.cache = cache if cache is not None else make_cache(settings)
        self.counters = Counters()
        self._encoding = SingleFlight()  # one encoding per image in flight
        self._concepts_lock = threading.Lock()
        self._tuned: ModelCache[Segmenter] = ModelCache(self._load_tuned, keep=8)
        self._concepts: SegmentationService | None = None

    def segmenter_for(self, project_id: str = "") -> Segmenter:
        """The project's active fine-tuned segmenter (see `fit`), else the base engine."""
        base = self.engine.get()
        if not str(project_id).isdigit() or not self.engine.spec().can(TRAINABLE_DECODER):
            return base
        versions = ModelVersions(self.settings.model_dir, project_id)
        active = versions.active()
        if active is None:
            return base
        return self._tuned.get(project_id, active.name, active.weights.stat().st_mtime_ns)

    def concept_service(self) -> SegmentationService:
        """The service whose engine answers concept prompts (phrases, exemplars): this one on SAM_ENGINE=sam3,
        else a SAM 3 of SAM3_CHECKPOINT beside it, sharing the embedding cache (keys carry the fingerprint)."""
        if self.engine.spec().can(CONCEPTS):
            return self
        with self._concepts_lock:
            if self._concepts is None:
                settings = replace(self.settings, sam_engine="sam3", sam_checkpoint=self.settings.sam3_checkpoint)
                self._concepts = SegmentationService(settings, self.cache)
                self._concepts.counters = self.counters
            return self._concepts

    def _load_tuned(self, project_id: str, name: str, mtime_ns: int) -> Segmenter:
        """The base engine with a project's fine-tuned decoder (`mtime_ns` keys a rewritten version file)."""
        versions = ModelVersions(self.settings.model_dir, project_id)
        return self.engine.get().with_decoder(versions.load_weights(versions.get(name)), name)

    def embedding(self, image: TaskImage) -> Embedding:
        """The image's embedding: from the cache, else encoded once (concurrent requests get that encoding)."""
        segmenter = self.engine.get()
        key = cache_key(segmenter.fingerprint, image.key)

        def encode() -> Embedding:
            embedding = self.cache.get(key)  # put by a run that just ended
            if embedding is None:
                pixels = image.pixels(self.settings)
                started = time.perf_counter()
                embedding = segmenter.embed(pixels)
                self.counters.add("encoder_runs", time.perf_counter() - started)
                self.cache.put(key, embedding)
            return embedding

        embedding = self.cache.get(key)
        return embedding if embedding is not None else self._encoding.run(key, encode)

    def segment(self, image: TaskImage, prompt: ContextPrompt | Prompt,
                segmenter: Segmenter | None = None) -> MaskResult:
        """The mask for a prompt on an image (percent prompts are mapped to the image's pixels)."""
        embedding = self.embedding(image)
        height, width = embedding.original_size
        if isinstance(prompt, ContextPrompt):
            prompt = prompt.to_prompt(width, height)
        started = time.perf_counter()
        result = (segmenter or self.engine.get()).decode(embedding, prompt)
        self.counters.add("decoder_runs", time.perf_counter() - started)
        return result

    def predict(self, task: dict, context: object, config: LabelConfig, project_id: str = "") -> dict:
        """The prediction for one interactive request on one task (the project's fine-tuned decoder if any)."""
        prompt = parse_context(context, self.settings.max_prompt_points)
        control, label = config.output_for(prompt.label)
        url, task_id = task_image_url(task, config)
        image = read_task_image(url, self.settings, task_id)
        segmenter = self.segmenter_for(project_id)
        result = self.segment(image, prompt, segmenter)
        if not np.any(result.mask):
            logger.info("task %s: the prompt gave an empty mask", task_id)
        items = mask_results(result.mask, result.score, control, label, self.settings.polygon_epsilon)
        return {"result": items, "score": result.score, "model_version": self.version_of(segmenter)}

    def version_of(self, segmenter: Segmenter) -> str:
        """The model version of a prediction made with `segmenter` (base, or base plus its tuned decoder)."""
        return model_version(self.settings, getattr(segmenter, "version", None))


def precompute_embeddings(urls: list[str]) -> dict:
    """Job: embed images ahead of the first click (into the shared cache when Redis is configured)."""
    service = get_segmentation()
    done, failed = 0, {}
    for url in urls:
        try:
            service.embedding(read_task_image(url, service.settings))
            done += 1
        except Exception as exc:  # one bad image must not stop the rest
            failed[short_url(url)] = str(exc)
            logger.warning("precomputing the embedding of %s failed: %s", short_url(url), exc)
    return {"embedded": done, "failed": failed}


_instance: SegmentationService | None = None
_instance_lock = threading.Lock()


def get_segmentation() -> SegmentationService:
    """The process-wide service (engine + cache), made on first use from the current settings."""
    global _instance
    with _instance_lock:
        if _instance is None:
            from backend.core.settings import get_settings

            _instance = SegmentationService(get_settings())
        return _instance


def preload_in_background() -> threading.Thread | None:
    """Load the SAM model (downloading its checkpoint where allowed) in a background thread, so that the
    first click does not pay for it; /health says `loading` meanwhile and requests wait for it.
    Served processes call this at start (gunicorn.conf.py, `python _wsgi.py`); PRELOAD_MODEL=false skips it."""
    from backend.core.settings import get_settings

    if not get_settings().preload_model:
        return None

    def load() -> None:
        try:
            get_segmentation().engine.get()
        except BackendError as exc:  # /health and every /predict say what is missing
            logger.warning("preloading the model failed: %s", exc)

    thread = threading.Thread(target=load, name="preload-model", daemon=True)
    thread.start()
    return thread


def reset_segmentation() -> None:
    """Forget the service and settings (tests, or after changing the environment)."""
    global _instance
    from backend.core.settings import get_settings

    with _instance_lock:
        _instance = None
        get_settings.cache_clear()
