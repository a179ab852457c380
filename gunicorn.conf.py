"""gunicorn settings read from the working directory: each worker starts loading the model at once."""


def post_worker_init(worker) -> None:
    from backend.interactive import preload_in_background

    preload_in_background()
