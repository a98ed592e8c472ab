"""A quiet console for the tools: long dumps go to the log file only, progress stays visible.

mmengine logs the whole config (hundreds of lines), the hook order and one line per
weight-decay setting at INFO before training starts. ``quiet_console`` puts a filter in front
of ``sys.stdout`` (where mmengine's console handler writes) that replaces each of those
records by one line; the log file in the work dir still gets every record in full.
"""
import io
import sys
from typing import Optional

# (marker in a formatted record, what the console shows instead; None: counted, shown once)
QUIET_RECORDS = (
    (' - INFO - Config:\n', 'config: in the log file (--verbose prints it here)'),
    (' - INFO - Hooks will be executed in the following order:',
     'hook order: in the log file (--verbose prints it here)'),
    (' - INFO - paramwise_options -- ', None),
)


class QuietStream(io.TextIOBase):
    """A text stream that forwards writes to ``target``, folding the records above."""

    def __init__(self, target) -> None:
        self.target = target
        self.folded = 0

    def _flush_folded(self) -> None:
        if self.folded:
            self.target.write(f'optimizer: {self.folded} per-parameter weight-decay/lr '
                              'settings in the log file (--verbose prints them here)\n')
            self.folded = 0

    def write(self, text: str) -> int:
        for marker, replacement in QUIET_RECORDS:
            if marker in text:
                if replacement is None:
                    self.folded += 1
                else:
                    self._flush_folded()
                    head = text.split(marker)[0]
                    self.target.write(f'{head} - INFO - {replacement}\n')
                return len(text)
        self._flush_folded()
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> Optional[str]:
        return getattr(self.target, 'encoding', None)


def quiet_console(verbose: bool = False) -> None:
    """Fold the long start-up records on the console unless ``verbose``. Call before the
    Runner is built (its console handler keeps the stream it finds)."""
    if verbose or isinstance(sys.stdout, QuietStream):
        return
    sys.stdout = QuietStream(sys.stdout)
