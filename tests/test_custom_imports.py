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
