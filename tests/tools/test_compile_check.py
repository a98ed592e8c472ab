"""tools/analysis/compile_check.py end to end with the quick aot_eager backend."""
import pytest
from helpers import load_tool

pytestmark = pytest.mark.usefixtures('single_thread')


def test_compile_check_passes_and_reports_each_size(capsys):
    tool = load_tool('tools/analysis/compile_check.py')
    assert tool.main(['--backend', 'aot_eager', '--sizes', '64x64']) == 0
    out = capsys.readouterr().out
    assert 'aot_eager 64x64: step' in out and 'finite True' in out and 'PASS' in out
