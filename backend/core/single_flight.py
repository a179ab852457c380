"""Single flight: concurrent calls for one key in a process run the work once; the others wait for that run
and get its result or its error (a download of one URL, the encoding of one image). Nothing is kept after."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


class SingleFlight:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._running: dict[object, Future] = {}

    def run(self, key: object, work: Callable[[], T]) -> T:
        """`work()`, or the outcome of the run of `work` for `key` that is already in flight."""
        with self._guard:
            future = self._running.get(key)
            leads = future is None
            if leads:
                future = self._running[key] = Future()
        if not leads:
            return future.result()
        try:
            result = work()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._guard:
                del self._running[key]

    def __len__(self) -> int:
        return len(self._running)
