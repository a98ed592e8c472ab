"""mmvit_plugin: MViTv2 for OpenMMLab. Importing it registers every plugin class."""
from . import checkpoint, datasets, engine, models  # noqa: F401  (registration side effects)

__version__ = '0.1.0'
