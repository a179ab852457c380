"""The label-studio-ml HTTP protocol on current Flask: /health /setup /predict /webhook /versions /metrics.

Request and response JSON follow label-studio-ml 2.x, so Label Studio talks to this app as to any
ML backend. Every error answers JSON {"status": "ERROR", "error": ..., "where": ...} with a 4xx/5xx
status, is logged, and leaves the process serving the next request.
"""

from __future__ import annotations

import hmac
import logging
import time
import traceback

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from .errors import BackendError, InputError
from .ml_base import LabelStudioMLBase
from .settings import Settings, get_settings

logger = logging.getLogger(__name__)

# label-studio-ml's events, plus ANNOTATIONS_DELETED: what Label Studio sends when annotations are deleted.
TRAIN_EVENTS = (
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "ANNOTATIONS_DELETED", "START_TRAINING",
)


def error_response(error: Exception) -> tuple[Response, int]:
    if isinstance(error, BackendError):
        logger.warning("%s %s -> %s", request.method, request.path, error)
        body = {"status": "ERROR", "error": error.message, "where": error.where}
        return jsonify(body), error.status
    if isinstance(error, HTTPException):
        return jsonify({"status": "ERROR", "error": error.description, "where": request.path}), error.code or 500
    logger.error("%s %s failed: %s\n%s", request.method, request.path, error, traceback.format_exc())
    body = {"status": "ERROR", "error": f"{type(error).__name__}: {error}", "where": request.path}
    return jsonify(body), 500


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object", request.path)
    return body


def _project_id(value: object) -> str:
    """Label Studio sends '<id>.<created-at timestamp>' or an id."""
    return str(value).split(".", 1)[0] if value not in (None, "") else ""


def _authorized(settings: Settings) -> bool:
    if not settings.basic_auth_user:
        return True
    auth = request.authorization
    return bool(
        auth
        and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
        and hmac.compare_digest(auth.password or "", settings.basic_auth_pass)
    )


def create_app(model_class: type[LabelStudioMLBase], health_extra=None, metrics_extra=None) -> Flask:
    """The WSGI app serving `model_class`. `health_extra()` / `metrics_extra()` add fields to those routes."""
    app = Flask(__name__)
    app.json.sort_keys = False
    app.register_error_handler(Exception, error_response)

    @app.before_request
    def _check_auth():
        if not _authorized(get_settings()):
            response = jsonify({"status": "ERROR", "error": "basic authentication required", "where": request.path})
            response.headers["WWW-Authenticate"] = 'Basic realm="ml-backend"'
            return response, 401
        g.started = time.perf_counter()
        return None

    @app.after_request
    def _log(response: Response) -> Response:
        took = time.perf_counter() - g.get("started", time.perf_counter())
        logger.info("%s %s %s %.1f ms", request.method, request.path, response.status_code, took * 1000)
        return response

    @app.get("/")
    @app.get("/health")
    def health():
        body = {"status": "UP", "model_class": model_class.__name__}
        if health_extra:
            body.update(health_extra())
        return jsonify(body)

    @app.post("/setup")
    def setup():
        data = _json_body()
        model = model_class(project_id=_project_id(data.get("project")), label_config=data.get("schema"))
        if data.get("extra_params"):
            model.set_extra_params(data["extra_params"])
        return jsonify({"model_version": model.model_version})

    @app.post("/predict")
    def predict():
        data = _json_body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise InputError("'tasks' must be a list of Label Studio tasks", "/predict")
        params = dict(data.get("params") or {})
        context = params.pop("context", None)
        model = model_class(project_id=_project_id(data.get("project")), label_config=data.get("label_config"))
        predictions = model.predict(tasks, context=context, **params)
        return jsonify({"results": predictions or [], "model_version": model.model_version})

    @app.post("/webhook")
    def webhook():
        data = _json_body()
        event = data.pop("action", None)
        if event not in TRAIN_EVENTS:
            handler = getattr(model_class, "on_event", None)
            project = data.get("project")
            if handler and isinstance(project, dict) and "id" in project:
                model = model_class(project_id=str(project["id"]), label_config=project.get("label_config"))
                result = model.on_event(event, data)
                if result is not None:
                    return jsonify(result), 201
            return jsonify({"status": "Unknown event", "event": event}), 200
        project = data.get("project")
        if not isinstance(project, dict) or "id" not in project:
            raise InputError("webhook payload has no project object with an id", "/webhook")
        model = model_class(project_id=str(project["id"]), label_config=project.get("label_config"))
        result = model.fit(event, data)
        return jsonify(result or {}), 201

    @app.get("/versions")
    def versions():
        model = model_class(project_id=_project_id(request.args.get("project")), label_config=None)
        return jsonify({"versions": model.versions(), "model_version": model.model_version})

    @app.get("/metrics")
    def metrics():
        return jsonify(metrics_extra() if metrics_extra else {})

    return app

