"""Every module of the package and every Python tool opens with a docstring whose first line
says what it holds."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = sorted([*REPO.glob('mmvit_plugin/**/*.py'), *REPO.glob('tools/**/*.py')])


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_opens_with_a_one_line_summary(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f'{path.relative_to(REPO)} has no module docstring'
    first = doc.splitlines()[0].strip()
    assert first and len(first) <= 100, \
        f'{path.relative_to(REPO)}: the first docstring line should be one short summary'
