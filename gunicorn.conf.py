"""gunicorn settings read from the working directory: refuse unsafe settings (an unauthenticated public bind
among them) before serving; each worker starts loading the model at once."""


def on_starting(server) -> None:
    from backend.core.errors import SettingsError
    from backend.core.settings import check_startup, get_settings

    hosts = [address[0] if isinstance(address, tuple) else f"unix:{address}" for address in server.cfg.address]
    try:
        check_startup(get_settings(), hosts)
    except SettingsError as exc:
        raise SystemExit(str(exc))


def post_worker_init(worker) -> None:
    from backend.segmentation.service import preload_in_background

    preload_in_background()


def worker_exit(server, worker) -> None:
    """A stopping worker does not wait for a running in-process job (a training outlived its master by 13 min):
    queued jobs are canceled, the running one recorded as failed, and the process ends now."""
    import os

    from backend.core import jobs

    if isinstance(jobs._queue, jobs.InProcessQueue) and jobs._queue.shutdown():
        os._exit(0)  # without joining the job's thread
