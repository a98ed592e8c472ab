"""The shell tools under set -u: a `local` statement must not read a name it declares.

bash expands every word of a `local` line before assigning any of them, so in
``local name=$2 log=$WORK/$name.log`` the ``$name`` is the caller's (unset: the script stops
under ``set -u``). tools/quickstart_video.sh stopped so after both trainings, before testing.
"""
import glob
import os.path as osp
import re

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPTS = sorted(glob.glob(osp.join(REPO, 'tools', '**', '*.sh'), recursive=True))


def self_references(script_text: str):
    """(line number, name) for each `local` line that reads a name it declares."""
    found = []
    for number, line in enumerate(script_text.splitlines(), 1):
        code = line.split('#', 1)[0].strip()
        if not code.startswith('local '):
            continue
        words = code.split()[1:]
        for index, word in enumerate(words):
            name = word.split('=', 1)[0]
            later = ' '.join(words[index + 1:])
            if re.search(r'\$\{?' + re.escape(name) + r'\b', later):
                found.append((number, name))
    return found


def test_the_check_finds_the_bug_it_guards_against():
    assert self_references('f() {\n    local config=$1 name=$2 log=$WORK/$name.log\n}\n') == \
        [(2, 'name')]
    assert self_references('    local config=$1 name=$2\n    local log=$WORK/$name.log\n') == []


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: osp.relpath(p, REPO))
def test_no_local_statement_reads_a_name_it_declares(script):
    with open(script) as f:
        assert self_references(f.read()) == [], script
