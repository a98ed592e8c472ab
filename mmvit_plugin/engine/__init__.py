"""mmengine glue: hooks, optimizer wrappers and launch helpers."""
from . import hooks, launch, optim  # noqa: F401
