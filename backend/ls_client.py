"""The Label Studio API client (label-studio-sdk) from the settings, with errors that say what is missing."""

from __future__ import annotations

from .errors import BackendError, InputError
from .settings import Settings


class LabelStudioUnreachableError(BackendError):
    status = 502


def make_client(settings: Settings):
    from label_studio_sdk import LabelStudio

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise InputError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set to read and update tasks",
                         "settings")
    return LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_api_key,
                       timeout=settings.download_timeout)


def call(what: str, function, *args, **kwargs):
    """Run one SDK call; connection problems and API errors become one clear error naming `what`."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        return function(*args, **kwargs)
    except ApiError as exc:
        raise LabelStudioUnreachableError(f"Label Studio answered {exc.status_code}: {str(exc.body)[:300]}", what)
    except httpx.HTTPError as exc:
        raise LabelStudioUnreachableError(f"Label Studio is unreachable ({type(exc).__name__}: {exc})", what)
