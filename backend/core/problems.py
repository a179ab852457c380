"""Configuration problems: failures that are the project's or the server's, not one task's (a model that cannot
load, a labeling config a feature cannot serve). Each is logged once per process and shown by /health, instead
of being written on every task it touches."""

from __future__ import annotations

import logging
import threading
import time

from backend.core.logs import redact_paths

logger = logging.getLogger(__name__)


class ConfigurationProblems:
    """The latest configuration problem of each feature ("pre-labeling", ...), until that feature works again."""

    def __init__(self) -> None:
        self._problems: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def report(self, feature: str, error: BaseException) -> None:
        message = redact_paths(str(error))
        with self._lock:
            new = self._problems.get(feature, ("",))[0] != message
            self._problems[feature] = (message, time.time())
        if new:  # once per distinct problem, not once per task
            logger.warning("%s cannot run: %s (shown by /health; tasks are not marked)", feature, message)

    def clear(self, feature: str) -> None:
        with self._lock:
            if self._problems.pop(feature, None):
                logger.info("%s works again", feature)

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return {feature: message for feature, (message, _) in self._problems.items()}


configuration_problems = ConfigurationProblems()
