"""The label-studio-ml HTTP protocol on current Flask: /health /setup /predict /webhook /versions /metrics.

Request and response JSON follow label-studio-ml 2.x, so Label Studio talks to this app as to any
ML backend. Every error answers JSON {"status": "ERROR", "error": ..., "where": ...} with a 4xx/5xx
status, is logged, and leaves the process serving the next request.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend.core.errors import BackendError, ForbiddenError, InputError, SettingsError
from backend.core.logs import failure_text, redact_paths
from backend.core.model_cache import LOAD_WAIT
from backend.core.settings import Settings, get_settings
from backend.serving import metrics
from backend.serving.ml_base import LabelStudioMLBase

logger = logging.getLogger(__name__)

# label-studio-ml's events, plus ANNOTATIONS_DELETED: what Label Studio sends when annotations are deleted.
TRAIN_EVENTS = (
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED", "START_TRAINING",
)
_PROJECT = re.compile(r"^\d{1,12}(\.\d{1,20})?\Z")
MAX_EXTRA_PARAMS_BYTES = 64 << 10


def error_response(error: Exception) -> tuple[Response, int]:
    """JSON error body: a BackendError's message (server paths replaced by setting names), a generic text with
    an id for anything unexpected (the traceback goes to the log under that id)."""
    if isinstance(error, BackendError):
        logger.warning("%s %s -> %s", request.method, request.path, error)
        return error_body(redact_paths(error.message), redact_paths(error.where or ""), error.status)
    if isinstance(error, RequestEntityTooLarge):
        message = f"request body is larger than MAX_REQUEST_MB={get_settings().max_request_mb}"
        return error_body(message, request.path, 413)
    if isinstance(error, HTTPException):
        return error_body(error.description or "", request.path, error.code or 500)
    return error_body(failure_text(error, f"{request.method} {request.path}", logger), request.path, 500)


def error_body(message: str, where: str, status: int) -> tuple[Response, str]:
    """The JSON error body, with the message in the status line as well: Label Studio shows only the status line
    of a failed call (requests' "400 Client Error: <reason> for url"), in the Connect Model form and its logs."""
    body = {"status": "ERROR", "error": message, "where": where}
    return jsonify(body), f"{status} {status_phrase(f'{where}: {message}' if where else message)}"


def json_body() -> dict:
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise InputError("request body is nested too deeply", request.path)
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object", request.path)
    return body


def _optional(body: dict, key: str, kind: type, where: str):
    """body[key] if it is None or of `kind`; InputError naming the field otherwise."""
    value = body.get(key)
    if value is not None and not isinstance(value, kind):
        raise InputError(f"'{key}' must be {'an object' if kind is dict else 'a ' + kind.__name__}, got "
                         f"{type(value).__name__}", where)
    return value


def _project_id(value: object) -> str:
    """Label Studio sends '<id>.<created-at timestamp>' or an id; anything else is refused."""
    if value in (None, ""):
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not _PROJECT.match(str(value)):
        raise InputError(f"project must be an id like 3 or '3.1700000000', got {str(value)[:40]!r}", "project")
    return str(value).split(".", 1)[0]


def _authorized(settings: Settings) -> bool:
    if not settings.basic_auth_user:
        return True
    auth = request.authorization
    return bool(
        auth
        and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
        and hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
    )


def status_phrase(text: str, limit: int = 400) -> str:
    """`text` as an HTTP reason phrase: one line of printable ASCII."""
    phrase = "".join(c if " " <= c <= "~" else " " for c in text).strip()
    return phrase if len(phrase) <= limit else phrase[: limit - 3] + "..."


def _extra_params(data: dict) -> dict:
    """/setup's extra_params: an object, or what Label Studio's Connect Model form sends (its text field as a
    string: "" when left empty, "{...}" when typed)."""
    value = data.get("extra_params")
    if value is None or isinstance(value, dict):
        return value or {}
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise InputError(f"'extra_params' must be a JSON object (Label Studio's 'Any extra params' field), got "
                     f"{str(value)[:60]!r}", "/setup extra_params")


def _health_needs_auth(settings: Settings) -> bool:
    """/health refuses wrong credentials, and missing ones from Label Studio (its ML client sends User-Agent
    heartex/<version>) when basic auth is on: its Connect Model form explains a failed authentication ("...
    authentication parameters were either not provided or are incorrect") only for a 401 from /health.
    Orchestration probes without credentials still get the status."""
    if not settings.basic_auth_user:
        return False
    return request.authorization is not None or request.headers.get("User-Agent", "").startswith("heartex/")


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def create_app(model_class: type[LabelStudioMLBase], health_extra=None, metrics_extra=None,
               not_ready=None) -> Flask:
    """The WSGI app serving `model_class`. `health_extra()` / `metrics_extra()` add fields to those routes;
    `not_ready()` says why the model cannot serve (None: it can)."""
    settings = get_settings()
    problems = settings.problems()
    if problems:
        raise SettingsError(problems)
    app = Flask(__name__)
    app.json.sort_keys = False
    app.register_error_handler(Exception, error_response)

    @app.before_request
    def _check_auth():
        g.started = time.perf_counter()
        settings = get_settings()
        request.max_content_length = settings.max_request_mb << 20
        LOAD_WAIT.set(settings.model_load_wait)
        if request.path in ("/", "/health") and not _health_needs_auth(settings):
            return None  # orchestration probes: status only without credentials
        if not _authorized(settings):
            response, status = error_body("basic authentication required (BASIC_AUTH_USER / BASIC_AUTH_PASS)",
                                          request.path, 401)
            response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
            return response, status
        return None

    @app.after_request
    def _log(response: Response) -> Response:
        took = time.perf_counter() - g.get("started", time.perf_counter())
        logger.info("%s %s %s %.1f ms", request.method, request.path, response.status_code, took * 1000)
        route = request.url_rule.rule if request.url_rule else "unmatched"  # bounded label values
        metrics.observe(route, request.method, response.status_code, took)
        return response

    @app.get("/")
    @app.get("/health")
    def health():
        """UP (200), or ERROR (503) with the reason when the configured model cannot serve, so that Label
        Studio's model card shows it on connect; details (`health_extra`) only for authenticated callers."""
        problem = not_ready() if not_ready else None
        body = {"status": "ERROR" if problem else "UP", "model_class": model_class.__name__}
        if problem:
            body["error"] = redact_paths(problem)
        if health_extra and _authorized(get_settings()):
            body.update(health_extra())
        # Label Studio shows only the status line of a failed health check: the reason goes there too.
        return jsonify(body), f"503 {status_phrase(body['error'])}" if problem else 200

    @app.post("/setup")
    def setup():
        data = json_body()
        schema = _optional(data, "schema", str, "/setup schema")
        extra = _extra_params(data)
        model = model_class(project_id=_project_id(data.get("project")), label_config=schema)
        if len(json.dumps(extra)) > MAX_EXTRA_PARAMS_BYTES:
            raise InputError(f"extra_params is larger than {MAX_EXTRA_PARAMS_BYTES >> 10} KB", "/setup")
        model.set_extra_params(extra)  # what Label Studio holds now: a field emptied in its form clears them
        return jsonify({"model_version": model.model_version})

    @app.post("/predict")
    def predict():
        data = json_body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise InputError("'tasks' must be a list of Label Studio tasks", "/predict")
        params = dict(_optional(data, "params", dict, "/predict params") or {})
        context = params.pop("context", None)
        if context is not None and not isinstance(context, dict):
            raise InputError(f"'params.context' must be an object, got {type(context).__name__}", "/predict")
        label_config = _optional(data, "label_config", str, "/predict label_config")
        model = model_class(project_id=_project_id(data.get("project")), label_config=label_config)
        predictions = model.predict(tasks, context=context, **params)
        return jsonify({"results": predictions or [], "model_version": model.model_version})

    @app.post("/webhook")
    def webhook():
        data = json_body()
        event = data.pop("action", None)
        project = data.get("project")
        if event not in TRAIN_EVENTS:
            handler = getattr(model_class, "on_event", None)
            if handler and isinstance(project, dict) and "id" in project:
                model = model_class(project_id=_project_id(project["id"]),
                                    label_config=_optional(project, "label_config", str, "/webhook project"))
                result = model.on_event(event, data)
                if result is not None:
                    return jsonify(result), 201
            return jsonify({"status": "Unknown event", "event": str(event)[:64]}), 200
        if not get_settings().basic_auth_user and not _is_loopback(request.remote_addr):
            raise ForbiddenError("training events are accepted only from authenticated callers: set BASIC_AUTH_USER "
                                 "and BASIC_AUTH_PASS here and the same credentials on Label Studio's webhook "
                                 "(README, Security)", "/webhook")
        if not isinstance(project, dict) or "id" not in project:
            raise InputError("webhook payload has no project object with an id", "/webhook")
        for key, kind in (("annotation", dict), ("task", dict), ("annotations", list)):
            _optional(data, key, kind, f"/webhook {key}")
        model = model_class(project_id=_project_id(project["id"]),
                            label_config=_optional(project, "label_config", str, "/webhook project"))
        result = model.fit(event, data)
        return jsonify(result or {}), 201

    @app.get("/versions")
    def versions():
        model = model_class(project_id=_project_id(request.args.get("project")), label_config=None)
        return jsonify({"versions": model.versions(), "model_version": model.model_version})

    @app.get("/metrics")
    def metrics_route():
        """label-studio-ml's JSON; Prometheus' text format for scrapers (Accept: text/plain or openmetrics,
        or ?format=prometheus)."""
        accept = request.headers.get("Accept", "")
        if request.args.get("format") == "prometheus" or "text/plain" in accept or "openmetrics" in accept:
            return Response(metrics.exposition(metrics_extra), content_type=metrics.CONTENT_TYPE)
        return jsonify(metrics_extra() if metrics_extra else {})

    return app
