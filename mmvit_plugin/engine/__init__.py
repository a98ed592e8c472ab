"""mmengine glue: hooks and launch helpers."""
from . import hooks, launch  # noqa: F401
