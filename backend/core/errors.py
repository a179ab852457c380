"""Errors that reach the annotator: each says what went wrong and where."""

from __future__ import annotations


class BackendError(Exception):
    """Base class. `status` is the HTTP status the protocol answers with."""

    status = 500

    def __init__(self, message: str, where: str | None = None):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class InputError(BackendError):
    """The request itself is wrong: malformed context, unknown label, coordinates outside the image."""

    status = 400


class ConfigError(InputError):
    """The project's labeling config or the server's settings cannot serve the request: the same for every task of
    the project, so it is reported once (log, /health), never as one task's failure."""


class ImageError(BackendError):
    """The task's image cannot be read: unreachable, broken, empty."""

    status = 422


class StorageError(BackendError):
    """A folder the server writes to (MODEL_DIR, OUTPUT_DIR) cannot be written: the server's problem."""

    status = 503


class ModelUnavailableError(BackendError):
    """The configured model cannot be loaded (missing checkpoint, wrong file)."""

    status = 503


def is_configuration_problem(error: BaseException) -> bool:
    """A failure that is the project's or the server's (a model that cannot load, a config it cannot serve), not
    one task's."""
    return isinstance(error, (ConfigError, ModelUnavailableError))


class ForbiddenError(BackendError):
    """The caller may not do this (e.g. an unauthenticated training webhook)."""

    status = 403


class SettingsError(RuntimeError):
    """Settings that make the server unsafe or unusable: it refuses to start, naming each bad value."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the backend cannot start with these settings:\n  - " + "\n  - ".join(problems))
