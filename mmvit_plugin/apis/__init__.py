"""mmengine glue for users: model index, one-setting classifier builder, config models."""
from . import num_classes  # noqa: F401  (registers SyncedImageClassifier)
from .config_model import build_config_model, config_scope
from .model_index import config_and_weights, model_names, register_model_index

register_model_index()


def __getattr__(attr: str):
    if attr == 'MViTv2ActionRecogInferencer':
        from . import model_index
        return model_index.MViTv2ActionRecogInferencer
    raise AttributeError(f'module {__name__!r} has no attribute {attr!r}')


__all__ = ['MViTv2ActionRecogInferencer', 'build_config_model', 'config_and_weights',
           'config_scope', 'model_names', 'register_model_index']
