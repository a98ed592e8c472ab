"""A quiet console for the tools: long dumps go to the log file only, progress stays visible.

mmengine logs the system environment, the whole config (hundreds of lines), the hook order and
one line per weight-decay setting at INFO before training starts. ``quiet_console`` puts a
filter in front of ``sys.stdout`` (where mmengine's console handler writes) that replaces each
of those records by one line; the log file in the work dir still gets every record in full.

``python mmvit_plugin/engine/console.py [--tag NAME] [--log FILE]`` reads a tool's console
output on stdin, writes all of it to FILE and prints only concise progress: one line per
logged training iteration (loss, lr, eta), the validation and test results, the test progress
bar in steps of a tenth, the tools' summary lines and errors. The quickstart scripts pipe
``tools/train.py`` and ``tools/test.py`` through it. It imports nothing but the standard
library, so it starts at once and runs as a file.
"""
import argparse
import io
import re
import sys
from typing import Iterable, List, Optional, TextIO

# (marker in a formatted record, what the console shows instead; None: counted, shown once)
QUIET_RECORDS = (
    (' - INFO - \n' + '-' * 60 + '\nSystem environment:',
     'system environment: in the log file (--verbose prints it here)'),
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


# mmengine's LoggerHook records: "12/02 14:34:13 - mmengine - INFO - Epoch(train) [1][ 2/10]  k: v"
RECORD = re.compile(r'^\d\d/\d\d (?P<time>\d\d:\d\d:\d\d) - \S+ - (?P<level>[A-Z]+) - '
                    r'(?P<message>.*)$')
EPOCH_RECORD = re.compile(r'^Epoch\((?P<mode>train|val|test)\)\s+(?:\[(?P<epoch>\d+)\])?'
                          r'\[\s*(?P<iter>\d+)/(?P<total>\d+)\]\s+(?P<fields>.*)$')
# where a record starts, also behind a progress-bar frame that ended without a newline
RECORD_START = re.compile(r'(?=\d\d/\d\d \d\d:\d\d:\d\d - \S+ - [A-Z]+ - )')
FIELD = re.compile(r'(\S+): (\S+)')
# mmengine's ProgressBar frame: "[>>>>   ] 12/40, 3.1 task/s, elapsed: 4s, ETA:     9s"
BAR = re.compile(r'^\[[> ]*\] (?P<done>\d+)/(?P<total>\d+), [\d.]+ task/s, '
                 r'elapsed: (?P<elapsed>\d+)s, ETA:\s*(?P<eta>\d+)s')
# the tools' own summary lines, shown as they are
PASSED = ('training finished in ', ' test samples: ', 'predictions written to ',
          'metrics written to ')
# logged per-iteration timings and bookkeeping that are not results
NOT_METRICS = {'eta', 'time', 'data_time', 'memory', 'base_lr', 'lr', 'grad_norm'}


def _fields(text: str) -> dict:
    return dict(FIELD.findall(text))


def _number(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return f'{number:.4f}' if abs(number) >= 1e-3 or number == 0 else f'{number:.2e}'


class ProgressFilter:
    """Turns a tool's console output, line by line, into concise progress lines."""

    def __init__(self, tag: str = '') -> None:
        self.prefix = f'[{tag}] ' if tag else ''
        self.bar_tenth = -1

    def line(self, raw: str) -> Optional[str]:
        """The concise form of one console line, or None when it is not shown."""
        text = raw.rstrip('\n')
        bar = BAR.match(text.strip())
        if bar:
            done, total = int(bar['done']), int(bar['total'])
            tenth = 10 * done // max(total, 1)
            if tenth <= self.bar_tenth:
                return None
            self.bar_tenth = tenth if done < total else -1
            return (f'{self.prefix}test {done}/{total} batches, elapsed {bar["elapsed"]} s, '
                    f'eta {bar["eta"]} s')
        record = RECORD.match(text)
        if record is None:
            if any(marker in text for marker in PASSED):
                return self.prefix + text.strip()
            return None
        message, when = record['message'], record['time']
        if record['level'] in ('ERROR', 'CRITICAL'):
            return f'{self.prefix}{when} {record["level"]}: {message}'
        if any(marker in message for marker in PASSED):
            return f'{self.prefix}{when} {message}'
        epoch = EPOCH_RECORD.match(message)
        if epoch is None:
            return None
        fields = _fields(epoch['fields'])
        where = f'epoch {epoch["epoch"]} ' if epoch['epoch'] else ''
        if epoch['mode'] == 'train':
            parts = [f'{where}[{epoch["iter"]:>{len(epoch["total"])}}/{epoch["total"]}]']
            if 'loss' in fields:
                parts.append(f'loss {_number(fields["loss"])}')
            if 'lr' in fields:
                parts.append(f'lr {float(fields["lr"]):.2e}')
            if 'eta' in fields:
                parts.append(f'eta {fields["eta"]}')
            if 'time' in fields:
                timing = f'{float(fields["time"]):.2f} s/iter'
                if 'data_time' in fields:
                    timing += f' (data {float(fields["data_time"]):.2f})'
                parts.append(timing)
            return f'{self.prefix}{when} train ' + '  '.join(parts)
        results = {k: v for k, v in fields.items() if k not in NOT_METRICS}
        if not results or 'eta' in fields:
            return None  # a progress record of the val/test loop, not its result
        shown = '  '.join(f'{k} {_number(v)}' for k, v in results.items())
        return f'{self.prefix}{when} {epoch["mode"]} {where}'.rstrip() + f': {shown}'


def filter_progress(lines: Iterable[str], out: TextIO, tag: str = '',
                    log: Optional[TextIO] = None) -> None:
    """Write the concise progress of ``lines`` to ``out`` as it arrives, every line to ``log``."""
    progress = ProgressFilter(tag)
    for raw in lines:
        if log is not None:
            log.write(raw)
            log.flush()
        for part in RECORD_START.split(raw):
            try:
                shown = progress.line(part) if part.strip() else None
            except ValueError:  # a record of an unexpected form: it stays in the log
                shown = None
            if shown is not None:
                out.write(shown + '\n')
                out.flush()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description='Concise progress from tools/train.py or tools/test.py output on stdin, '
        'e.g. python tools/train.py CFG 2>&1 | python mmvit_plugin/engine/console.py '
        '--tag scratch --log train.log')
    parser.add_argument('--tag', default='', help='shown in brackets before every line')
    parser.add_argument('--log', help='write the whole input to this file')
    args = parser.parse_args(argv)
    # Universal newlines split the progress bar's carriage-return frames into lines.
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding='utf-8', errors='replace',
                              newline=None)
    if args.log is None:
        filter_progress(stream, sys.stdout, args.tag)
        return
    with open(args.log, 'w') as log:
        filter_progress(stream, sys.stdout, args.tag, log)


if __name__ == '__main__':
    main()
