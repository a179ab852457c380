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


class ImageError(BackendError):
    """The task's image cannot be read: unreachable, broken, empty."""

    status = 422


class ModelUnavailableError(BackendError):
    """The configured model cannot be loaded (missing checkpoint, wrong file)."""

    status = 503


class ForbiddenError(BackendError):
    """The caller may not do this (e.g. an unauthenticated training webhook)."""

    status = 403


class SettingsError(RuntimeError):
    """Settings that make the server unsafe or unusable: it refuses to start, naming each bad value."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the backend cannot start with these settings:\n  - " + "\n  - ".join(problems))
