"""mmengine glue: hooks, checks, schedules, atomic checkpoints, optimizer wrappers, launch."""
from . import checkpointing, hooks, launch, optim, training_checks  # noqa: F401
