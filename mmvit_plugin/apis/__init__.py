"""mmengine glue for users: the model index, the one-setting classifier builder, inference."""
from . import num_classes  # noqa: F401  (registers SyncedImageClassifier)
