"""mmvit_plugin: MViTv2 for OpenMMLab. Importing it registers every plugin class."""
import warnings

# mmcv-lite lacks the compiled ops; mmcv's transformer module warns at import that full mmcv is
# needed for MultiScaleDeformableAttention, which nothing here (nor the hosts' MViT paths) uses.
# Only that one warning is silenced, and only when this package is imported before the hosts.
warnings.filterwarnings(
    'ignore', message=r'Fail to import ``MultiScaleDeformableAttention``',
    category=UserWarning, module=r'mmcv\.cnn\.bricks\.transformer')

from . import apis, checkpoint, datasets, engine, models  # noqa: E402,F401  (registration)

__version__ = '0.1.0'
