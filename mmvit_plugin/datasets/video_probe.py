"""Probe videos as mmaction2 reads them, in child processes that a decoder crash cannot end.

mmaction2's ``DecordInit`` reads the whole file and hands decord an ``io.BytesIO``; decord
decodes some damaged files from a path but crashes the process (SIGSEGV) on the same bytes from
memory, e.g. a truncated MJPG ``.avi``. So every video is probed from memory, as training will
read it, and in a separate Python process: a crash ends that process only, the parent names the
file and starts a fresh process for the rest.

Run as a script, this file is the child: it reads one JSON-encoded path per line on stdin and
answers one JSON object per line on stdout. It imports only the standard library and decord,
so a child starts in a fraction of a second.
"""
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

# Written to the child's stderr before each probe, so that the parent can cut out the decoder's
# messages about one file.
_MARK = '@@mmvit-probe@@'
_LOG_LINES_KEPT = 3
# Frames decoded per batch when checking many frames (memory stays small).
_CHUNK = 16


@dataclass(frozen=True)
class ProbeResult:
    """What probing one video gave: ``reason`` is None when it decoded fine."""
    path: str
    reason: Optional[str] = None
    num_frames: int = 0
    height: int = 0
    width: int = 0


def probe_in_this_process(path: str, frames: Optional[Union[Sequence[int], str]] = None) -> dict:
    """Open ``path`` from memory with decord and decode its first and last frames in one batch;
    with ``frames`` (indices, or ``'all'``), decode those too, in chunks of ``_CHUNK``.

    May crash the calling process on a damaged file: call it only in a child.
    """
    import decord  # noqa: PLC0415  (the parent never imports decord for probing)
    try:
        with open(path, 'rb') as f:
            data = f.read()
        if not data:
            return dict(reason='empty file')
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        num_frames = len(reader)
        if num_frames <= 0:
            return dict(reason='decord found no frames')
        # get_batch as DecordDecode's default mode; the last frame shows a file cut short.
        shape = reader.get_batch(sorted({0, num_frames - 1})).asnumpy().shape
    except Exception as err:  # decord raises DECORDError or RuntimeError; OSError for files
        return dict(reason=f'{type(err).__name__}: {_clean(str(err))}')
    answer = dict(reason=None, num_frames=num_frames, height=int(shape[1]), width=int(shape[2]))
    if frames is not None:
        wanted = range(num_frames) if frames == 'all' else sorted(
            {int(i) % num_frames for i in frames})
        wanted = list(wanted)
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            try:
                reader.get_batch(chunk).asnumpy()
            except Exception as err:
                answer['reason'] = (f'opens and decodes at its start and end, but decoding '
                                    f'frames {chunk[0]}-{chunk[-1]} of {num_frames} failed: '
                                    f'{type(err).__name__}: {_clean(str(err))}')
                break
    return answer


def _strip_prefix(line: str) -> str:
    # decord prefixes its lines with a time and a source location: '[06:06:29] f.cc:83: '
    if line.startswith('[') and line[1:3].isdigit() and '] ' in line:
        line = line.split('] ', 1)[1]
        head, sep, rest = line.partition(': ')
        if sep and ':' in head and ' ' not in head:
            line = rest
    return line


def _clean(message: str) -> str:
    """decord's message on one line, without its prefix or the file's bytes it may quote."""
    line = _strip_prefix(message.strip().splitlines()[0] if message.strip() else '')
    # Given a memory buffer, decord names "the file" by quoting the buffer's contents.
    if 'of file' in line:
        line = line.split(' of file', 1)[0]
    elif line.startswith('ERROR opening:') and ', ' in line:
        line = 'ERROR opening: ' + line.rsplit(', ', 1)[-1]
    return line[:300]


def _child_main() -> None:
    for line in sys.stdin:
        request = json.loads(line)  # a path, or [path, frames]
        path, frames = request if isinstance(request, list) else (request, None)
        sys.stderr.write(f'\n{_MARK}\n')
        sys.stderr.flush()
        answer = probe_in_this_process(path, frames)
        sys.stdout.write(json.dumps(answer) + '\n')
        sys.stdout.flush()


def _decoder_log(log_file) -> str:
    """The decoder's last messages about the file probed last, from the child's stderr."""
    log_file.seek(0)
    text = log_file.read().decode('utf-8', errors='replace')
    text = text.rsplit(_MARK, 1)[-1]
    lines = []
    for line in text.splitlines():
        line = _clean(line)
        if line:
            lines.append(line)
    return ' / '.join(lines[-_LOG_LINES_KEPT:])


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f'signal {-returncode}'
    return f'exit status {returncode}'


class _Worker:
    """One child process probing paths one at a time; replaced when it dies."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.proc: Optional[subprocess.Popen] = None
        self.log = None

    def _start(self) -> None:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, bufsize=0)

    def probe(self, path: str, frames=None) -> ProbeResult:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        proc = self.proc
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(self.timeout, stop)
        timer.start()
        try:
            request = path if frames is None else [path, frames]
            proc.stdin.write((json.dumps(request) + '\n').encode())
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = b''
        finally:
            timer.cancel()
        if line:
            answer = json.loads(line)
            reason = answer.get('reason')
            if reason is not None:
                log = _decoder_log(self.log)
                if log:
                    reason += f' | decoder log: {log}'
            return ProbeResult(path, reason, answer.get('num_frames', 0),
                               answer.get('height', 0), answer.get('width', 0))
        returncode = proc.wait()
        log = _decoder_log(self.log)
        self.close()
        if timed_out.is_set():
            why = f'decoding took longer than {self.timeout:g} s (probe stopped)'
        elif frames is None:
            why = (f'the decoder crashed ({_signal_name(returncode)}) reading it from memory '
                   "as mmaction2's DecordInit does: training would lose its DataLoader worker")
        else:
            why = (f'the decoder crashed ({_signal_name(returncode)}) decoding the frames '
                   'evaluation reads (from memory, as mmaction2 does): evaluation would lose '
                   'its DataLoader worker')
        if log:
            why += f' | decoder log: {log}'
        return ProbeResult(path, why)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.stdin.close()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            else:
                self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None


def probe_videos(paths: Sequence[str], num_workers: int = 4, timeout: float = 120.0,
                 frames: Optional[Dict[str, Union[Sequence[int], str]]] = None
                 ) -> Dict[str, ProbeResult]:
    """Probe every distinct path in ``num_workers`` child processes; one result per path.

    ``frames`` maps a path to the frame indices (or ``'all'``) that must decode as well, e.g.
    those an evaluation pipeline reads; paths it leaves out are probed as usual."""
    frames = frames or {}
    unique = list(dict.fromkeys(paths))
    if not unique:
        return {}
    num_workers = max(1, min(num_workers, len(unique)))
    shards: List[List[str]] = [unique[i::num_workers] for i in range(num_workers)]

    def run(shard: List[str]) -> List[ProbeResult]:
        worker = _Worker(timeout)
        try:
            return [worker.probe(path, frames.get(path)) for path in shard]
        finally:
            worker.close()

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        results = [r for shard_results in pool.map(run, shards) for r in shard_results]
    return {result.path: result for result in results}


def probe_video(path: str, timeout: float = 120.0) -> Optional[str]:
    """Why ``path`` cannot be read the way training reads it (from memory), or None."""
    return probe_videos([path], 1, timeout)[path].reason


if __name__ == '__main__':
    _child_main()
