"""The checkpoint package's layering: it never imports the models (function-level imports
included), and the formats never import the architecture matching that uses them."""
import ast
from pathlib import Path

import mmvit_plugin.checkpoint as checkpoint

ROOT = Path(checkpoint.__file__).parent


def imported_modules(path: Path):
    """Absolute names of every module ``path`` imports, at any level of the file."""
    package = 'mmvit_plugin.' + '.'.join(path.relative_to(ROOT.parent).with_suffix('').parts)
    if path.name == '__init__.py':
        package += '.__init__'
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:-node.level]
                yield '.'.join(base + ([node.module] if node.module else []))
            else:
                yield node.module


def test_checkpoint_never_imports_the_models():
    for path in ROOT.rglob('*.py'):
        for name in imported_modules(path):
            assert not name.startswith('mmvit_plugin.models'), (path, name)


def test_formats_do_not_import_arch_info():
    for path in (ROOT / 'formats').rglob('*.py'):
        for name in imported_modules(path):
            assert name != 'mmvit_plugin.checkpoint.arch_info', path


def test_the_backbone_is_recognised_by_its_arch_not_its_class():
    import torch.nn as nn

    from mmvit_plugin.checkpoint.load import model_parts
    from mmvit_plugin.core.arch import ARCHS

    class LookAlike(nn.Module):
        arch = ARCHS['tiny']

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = LookAlike()
            self.head = nn.Module()
            self.head.fc = nn.Linear(2, 3)

    backbone, prefix, head = model_parts(Classifier())
    assert isinstance(backbone, LookAlike) and prefix == 'backbone.' and head == 'head.fc.'
