"""WSGI entry point: `gunicorn _wsgi:app`, or `python _wsgi.py --port 9090` (as `label-studio-ml start .` runs it)."""

from __future__ import annotations

import argparse
import logging
import os

from backend.core.errors import SettingsError
from backend.core.logs import install_log_escaping, redact_paths
from backend.core.problems import configuration_problems
from backend.core.settings import check_startup, get_settings
from backend.segmentation.service import get_segmentation, preload_in_background
from backend.serving import job_routes
from backend.serving.protocol import create_app
from model import SamBackend

logging.basicConfig(
    level=get_settings().log_level.upper(),
    format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s",
)
install_log_escaping()


def _engine_status() -> dict:
    status = get_segmentation().engine.status()
    return {**status, "problem": redact_paths(status["problem"])} if status.get("problem") else status


def _not_ready() -> str | None:
    """Why the configured engine cannot serve clicks (/health answers 503 with it), or None."""
    status = _engine_status()
    return None if status["loaded"] or status.get("loading") else status.get("problem")


def _health() -> dict:
    from backend.depth.estimate import _estimators
    from backend.prelabel.detector import _detectors

    settings = get_settings()
    engine = _engine_status()
    segmenter = "ready" if engine["loaded"] else "loading" if engine.get("loading") else engine.get("problem")
    features = {"segmenter": segmenter or "not loaded yet",
                "detector": redact_paths(_detectors.describe(settings.detector_model, settings.device)),
                "depth": redact_paths(_estimators.describe(settings.depth_model, settings.device))}
    return {"engine": engine, "features": features, "problems": configuration_problems.snapshot(),
            "cache": get_segmentation().cache.stats(), "worker": os.getpid()}


def _metrics() -> dict:
    service = get_segmentation()
    return {"engine": _engine_status(), "cache": service.cache.stats(), "worker": os.getpid(),
            **service.counters.snapshot()}


app = create_app(SamBackend, health_extra=_health, metrics_extra=_metrics, not_ready=_not_ready)
job_routes.register(app)


def main() -> None:
    parser = argparse.ArgumentParser(description="Segment Anything ML backend for Label Studio")
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("PORT", 9090)))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--kwargs", "--with", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings as KEY=VALUE (e.g. sam_engine=vit_b); same names as the environment")
    parser.add_argument("-d", "--debug", action="store_true", help="LOG_LEVEL=DEBUG (there is no debugger switch)")
    parser.add_argument("--log-level", default=None)
    parser.add_argument("--basic-auth-user", default=None)
    parser.add_argument("--basic-auth-pass", default=None)
    parser.add_argument("--model-dir", default=None, help="MODEL_DIR (as label-studio-ml passes it)")
    parser.add_argument("--check", action="store_true", help="load the engine, report, and exit")
    args = parser.parse_args()

    for pair in args.kwargs:
        key, _, value = pair.partition("=")
        os.environ[key.upper()] = value
    for key, value in (("LOG_LEVEL", "DEBUG" if args.debug else args.log_level),
                       ("BASIC_AUTH_USER", args.basic_auth_user), ("BASIC_AUTH_PASS", args.basic_auth_pass),
                       ("MODEL_DIR", args.model_dir)):
        if value is not None:
            os.environ[key] = value
    get_settings.cache_clear()
    try:
        check_startup(get_settings(), [args.host])
    except SettingsError as exc:
        raise SystemExit(str(exc))
    logging.getLogger().setLevel(get_settings().log_level.upper())
    if args.check:
        get_segmentation().engine.get()
        print(_health())
        return
    preload_in_background()
    app.run(host=args.host, port=args.port, debug=False, threaded=True)


if __name__ == "__main__":
    main()
