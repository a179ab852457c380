"""One memory budget per worker process (MEMORY_BUDGET_MB) for the work whose memory grows with the input:
image decoding and text-prompt (phrase) work. Concurrent requests reserve their estimate before they start;
one that does not fit waits a moment for others to finish, then is refused with a clear 503 "busy", instead
of eight requests each within the per-request limits taking the worker past the machine's memory together."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from backend.core.errors import BackendError

WAIT_SECONDS = 2.0  # a request that does not fit waits this long for others to give memory back


class BusyError(BackendError):
    """The worker's memory budget is spent by other requests just now: try again shortly."""

    status = 503


class MemoryBudget:
    """A counting budget in bytes with a short wait (threading.Condition)."""

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self.used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """Hold `nbytes` of the budget while the block runs; BusyError when they do not become free within
        WAIT_SECONDS (or can never fit)."""
        nbytes = max(0, int(nbytes))
        if nbytes > self.total:
            raise BusyError(f"{what} needs about {nbytes >> 20} MB, more than MEMORY_BUDGET_MB={self.total >> 20}",
                            "MEMORY_BUDGET_MB")
        deadline = time.monotonic() + WAIT_SECONDS
        with self._changed:
            while self.used + nbytes > self.total:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusyError(f"busy: {what} needs about {nbytes >> 20} MB and other requests hold "
                                    f"{self.used >> 20} of MEMORY_BUDGET_MB={self.total >> 20}; try again shortly",
                                    "MEMORY_BUDGET_MB")
                self._changed.wait(remaining)
            self.used += nbytes
        try:
            yield
        finally:
            with self._changed:
                self.used -= nbytes
                self._changed.notify_all()


_budgets: dict[int, MemoryBudget] = {}
_budgets_lock = threading.Lock()


def memory_budget(total_mb: int) -> MemoryBudget:
    """The process's budget of `total_mb` (one per setting value, so tests with other settings get their own)."""
    with _budgets_lock:
        return _budgets.setdefault(total_mb, MemoryBudget(total_mb << 20))
