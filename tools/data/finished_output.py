"""The marker a data builder leaves in its output folder, so a finished build is reused."""
import json
import os
import os.path as osp
import shutil
from typing import Iterable, Optional

DONE_MARKER = '.complete.json'


def reuse_or_clear(out: str, wanted: dict, splits: Iterable[str], force: bool,
                   what: str = 'task') -> Optional[dict]:
    """The summary of a finished build of ``wanted`` under ``out``, or None after removing
    the marker and the split folders of any other (or unfinished) build."""
    marker = osp.join(out, DONE_MARKER)
    if osp.isfile(marker) and not force:
        with open(marker) as f:
            summary = json.load(f)
        if all(summary.get(k) == v for k, v in wanted.items()):
            print(f'{out} already holds this {what} ({summary["counts"]}); --force redoes it')
            return summary
    if osp.isfile(marker):
        os.remove(marker)
    for split in splits:
        shutil.rmtree(osp.join(out, split), ignore_errors=True)
    return None


def mark_finished(out: str, summary: dict) -> dict:
    """Write the marker last, once every file of the build exists."""
    with open(osp.join(out, DONE_MARKER), 'w') as f:
        json.dump(summary, f)
    return summary
