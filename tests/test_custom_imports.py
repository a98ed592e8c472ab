"""Another OpenMMLab config needs only custom_imports to use the plugin."""
import subprocess
import sys
import textwrap


def test_custom_imports_alone_registers_the_backbone(tmp_path):
    config = tmp_path / 'other_project.py'
    config.write_text(textwrap.dedent("""
        custom_imports = dict(imports=['mmvit_plugin'], allow_failed_imports=False)
        default_scope = 'mmaction'
        model = dict(type='MViTv2', arch=dict(embed_dim=16, depth=4, num_heads=1,
                     stage_starts=(1, 2, 3), video=True, img_size=(4, 64, 64)))
    """))
    script = textwrap.dedent(f"""
        import sys, torch
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        assert 'mmvit_plugin' not in sys.modules
        cfg = Config.fromfile({str(config)!r})  # performs the custom import
        init_default_scope(cfg.default_scope)
        from mmaction.registry import MODELS
        model = MODELS.build(cfg.model)
        print(type(model).__module__, tuple(model(torch.zeros(1, 3, 4, 64, 64))[0].shape))
    """)
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'mmvit_plugin.models.mvitv2 (1, 128, 2, 2, 2)' in result.stdout


def _import_warnings(code: str) -> str:
    result = subprocess.run([sys.executable, '-W', 'default', '-c', code], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_import_does_not_ask_for_full_mmcv():
    """mmcv-lite warns about MultiScaleDeformableAttention, which nothing here needs."""
    assert 'MultiScaleDeformableAttention' in _import_warnings('import mmaction.models')
    stderr = _import_warnings('import mmvit_plugin, mmaction.models, mmpretrain.models')
    assert 'MultiScaleDeformableAttention' not in stderr and 'mmcv-lite' not in stderr


def test_only_that_warning_is_silenced():
    stderr = _import_warnings(textwrap.dedent("""
        import warnings
        import mmvit_plugin
        warnings.warn('Fail to import ``MultiScaleDeformableAttention`` elsewhere', UserWarning)
        warnings.warn('another mmcv notice', UserWarning)
    """))
    assert 'elsewhere' in stderr and 'another mmcv notice' in stderr


def test_extras_declare_what_the_tools_import():
    """README's test command installs .[tests]; the tools extra serves users of the tools."""
    import configparser
    import os.path as osp
    parser = configparser.ConfigParser()
    parser.read(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'setup.cfg'))
    extras = parser['options.extras_require']

    def names(extra):
        return {line.split('>')[0].split('=')[0].strip() for line in extras[extra].splitlines()
                if line.strip()}
    needed = {'grad-cam', 'imageio', 'onnx', 'onnxruntime', 'onnxscript'}
    assert needed <= names('tools')
    assert needed | {'pytest', 'scikit-image', 'scikit-video'} <= names('tests')
