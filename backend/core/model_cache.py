"""Models loaded once per process, by key; a failed load is remembered and retried only after a pause."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from typing import Generic, TypeVar

from backend.core.errors import ModelUnavailableError

T = TypeVar("T")
# Seconds a request may wait for a model load (set per request by the protocol; None: wait, as jobs and CLIs do).
LOAD_WAIT: ContextVar[float | None] = ContextVar("model_load_wait", default=None)


class ModelCache(Generic[T]):
    """`get(*key)` loads with `load(*key)` on first use and keeps the `keep` most recently used models.

    A load that raises ModelUnavailableError is not tried again for MODEL_RETRY_SECONDS (the same error
    is raised at once): offline, a missing hub model takes ~20 s to fail, which a bulk run would otherwise
    pay for every task. One load runs at a time, so concurrent first requests load a model once, and
    `loaded` / `failure` (for /health) answer at once even while a long load or download runs.
    """

    retry_after: float | None = None  # seconds; None: MODEL_RETRY_SECONDS

    def __init__(self, load: Callable[..., T], keep: int = 1):
        self._load = load
        self.keep = keep
        self._models: OrderedDict[Hashable, T] = OrderedDict()
        self._failures: dict[Hashable, tuple[float, ModelUnavailableError]] = {}
        self._loading: set[Hashable] = set()
        self._pending: dict[Hashable, Future] = {}
        self._state_lock = threading.Lock()  # guards the two dicts, held briefly
        self._load_lock = threading.Lock()  # held for the whole load

    def get(self, *key: Hashable) -> T:
        """The model of `key`, loaded on first use. Inside a request (LOAD_WAIT set) the load runs in a
        background thread and the request waits at most LOAD_WAIT seconds for it."""
        model = self.loaded(*key)
        if model is not None:
            return model
        wait = LOAD_WAIT.get()
        if wait is None:
            return self._load_now(key)
        with self._state_lock:
            future = self._pending.get(key)
            if future is None:
                future = self._pending[key] = Future()
                threading.Thread(target=self._load_into, args=(key, future), daemon=True,
                                 name="model-load").start()
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            raise ModelUnavailableError(f"the model is still loading (longer than MODEL_LOAD_WAIT={wait:g} s); "
                                        "try again shortly", "model")

    def _load_into(self, key: tuple, future: Future) -> None:
        try:
            future.set_result(self._load_now(key))
        except BaseException as exc:  # handed to every waiting request
            future.set_exception(exc)
        finally:
            with self._state_lock:
                self._pending.pop(key, None)

    def _load_now(self, key: tuple) -> T:
        with self._load_lock:
            with self._state_lock:
                if key in self._models:
                    return self._models[key]
                failure = self._failures.get(key)
            if failure is not None and time.monotonic() - failure[0] < self._retry_after():
                raise failure[1]
            with self._state_lock:
                self._loading.add(key)
            try:
                model = self._load(*key)
            except ModelUnavailableError as exc:
                with self._state_lock:
                    self._failures[key] = (time.monotonic(), exc)
                raise
            finally:
                with self._state_lock:
                    self._loading.discard(key)
            with self._state_lock:
                self._failures.pop(key, None)
                self._models[key] = model
                while len(self._models) > self.keep:
                    self._models.popitem(last=False)
            return model

    def _retry_after(self) -> float:
        if self.retry_after is not None:
            return self.retry_after
        from backend.core.settings import get_settings

        return get_settings().model_retry_seconds

    def loaded(self, *key: Hashable) -> T | None:
        """The model if it is loaded (never loads, never waits for a load)."""
        with self._state_lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
            return model

    def loading(self, *key: Hashable) -> bool:
        """Whether `key` is being loaded right now."""
        with self._state_lock:
            return key in self._loading

    def failure(self, *key: Hashable) -> ModelUnavailableError | None:
        """The last load error of `key`, if its load failed and has not succeeded since."""
        with self._state_lock:
            entry = self._failures.get(key)
            return entry[1] if entry else None

    def describe(self, *key: Hashable) -> str:
        """For /health: 'ready', 'loading', 'not loaded yet' (loads on first use) or the load error."""
        if self.loaded(*key) is not None:
            return "ready"
        if self.loading(*key):
            return "loading"
        failure = self.failure(*key)
        return f"failed: {failure.message}" if failure else "not loaded yet"

    def clear(self) -> None:
        with self._state_lock:
            self._models.clear()
            self._failures.clear()
