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
