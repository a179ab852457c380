"""`register_model` as a no-op registry (MobileSAM decorates its TinyViT factories with it)."""

_model_entrypoints: dict = {}


def register_model(fn):
    _model_entrypoints[fn.__name__] = fn
    return fn
