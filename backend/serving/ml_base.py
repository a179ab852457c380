"""`LabelStudioMLBase`: the model-class contract of label-studio-ml 2.x, without its pinned Flask stack.

A subclass overrides `setup`, `predict(tasks, context, **kwargs)` and `fit(event, data, **kwargs)`.
The protocol module builds one instance per request (as label-studio-ml does), so `setup` must be
cheap: heavy models belong in process-wide singletons.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import cached_property

from label_studio_sdk.label_interface import LabelInterface

_STORE: OrderedDict[str, dict] = OrderedDict()  # per project; bounded, least recently used projects go first
_STORE_LOCK = threading.Lock()
MAX_PROJECTS = 1024


class LabelStudioMLBase:
    INITIAL_MODEL_VERSION = "0.0.1"

    def __init__(self, project_id: str | None = None, label_config: str | None = None):
        self.project_id = str(project_id or "")
        self.label_config = label_config or ""
        self.setup()

    def setup(self) -> None:
        """Configure the instance (cheap: called for every request)."""

    # --- a small per-project key/value store, as label-studio-ml's `get` / `set` ---
    def _store(self) -> dict:
        with _STORE_LOCK:
            store = _STORE.setdefault(self.project_id, {})
            _STORE.move_to_end(self.project_id)
            while len(_STORE) > MAX_PROJECTS:
                _STORE.popitem(last=False)
            return store

    def get(self, key: str, default=None):
        return self._store().get(key, default)

    def set(self, key: str, value) -> None:
        self._store()[key] = value

    def has(self, key: str) -> bool:
        return key in self._store()

    @property
    def model_version(self) -> str:
        return str(self.get("model_version") or self.INITIAL_MODEL_VERSION)

    def set_extra_params(self, params: dict) -> None:
        self.set("extra_params", dict(params))

    @property
    def extra_params(self) -> dict:
        return self.get("extra_params") or {}

    @cached_property
    def label_interface(self) -> LabelInterface:
        return LabelInterface(self.label_config)

    def get_first_tag_occurence(self, control_type: str, object_type: str):
        return self.label_interface.get_first_tag_occurence(control_type, object_type)

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs) -> list[dict]:
        """One prediction per task: {"result": [...], "score": float, "model_version": str}."""
        return []

    def fit(self, event: str, data: dict, **kwargs) -> dict | None:
        """Handle an annotation event (ANNOTATION_CREATED, ANNOTATION_UPDATED, START_TRAINING, ...)."""
        return None

    def versions(self) -> list[str]:
        """Model versions this backend can serve for the project, newest last."""
        return [self.model_version]
