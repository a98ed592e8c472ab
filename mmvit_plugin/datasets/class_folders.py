"""The one class-folder scanner behind the image and the video datasets: layout, links, order.

Layout (the same for images and videos)::

    data_root/train/<class>/...   data_root/val/<class>/...   data_root/test/<class>/...

Rules, identical for both datasets:

- Class folders are the non-hidden folders directly under a split (a class folder may itself
  be a link). Class indices are the positions of ``class_split``'s (``train/``) sorted names,
  the same for every split; a split folder naming a class the training split lacks is an error.
- Each class folder is walked recursively (hidden files and folders are left out); samples are
  ordered by class index, then by path.
- Links inside a class folder are followed, files and folders alike, except a folder link that
  leads back into a folder being walked (a cycle), into another class folder of the split, to
  a folder holding one, or to a folder already walked. A file reached twice (two links, a hard
  link) is kept once; a file reached from two class folders has no single label and is left
  out of both. Everything left out is reported in one warning with a count and the first
  paths; nothing is left out silently.
- Two class folders that are the same folder, or one inside another, are an error.

Every problem with the layout raises :class:`DatasetLayoutError` naming the path.
"""
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

from mmengine.logging import print_log

# At most this many paths are spelled out in an error or a warning; the count is always given.
MAX_LISTED = 10

Sample = Tuple[str, int]


class DatasetLayoutError(ValueError):
    """The dataset's folders, or a file in them, are not usable; the message names the path."""


def describe(items: Sequence[Tuple[str, str]], limit: int = MAX_LISTED) -> str:
    """Indented ``path: reason`` lines, the first ``limit`` of them, then how many more."""
    lines = [f'  {path}: {reason}' for path, reason in items[:limit]]
    if len(items) > limit:
        lines.append(f'  ... and {len(items) - limit} more')
    return '\n'.join(lines)


def class_folder_names(split_dir: str) -> List[str]:
    """Sorted names of the class folders directly under ``split_dir``."""
    if not osp.isdir(split_dir):
        parent = osp.dirname(osp.abspath(split_dir))
        present = sorted(e.name for e in os.scandir(parent) if e.is_dir()) \
            if osp.isdir(parent) else []
        raise DatasetLayoutError(f'split folder {split_dir!r} does not exist (folders next to '
                                 f'it: {present})')
    names = sorted(entry.name for entry in os.scandir(split_dir)
                   if entry.is_dir() and not entry.name.startswith('.'))
    if not names:
        raise DatasetLayoutError(f'{split_dir!r} holds no class folders (expected '
                                 f'{split_dir}/<class name>/<file>)')
    return names


def training_classes(data_root: str, class_split: str = 'train') -> List[str]:
    """The class names: sorted class folders of ``data_root/class_split``."""
    if not data_root or not osp.isdir(data_root):
        raise DatasetLayoutError(f'dataset root {data_root!r} does not exist or is not a folder')
    class_dir = osp.join(data_root, class_split)
    if not osp.isdir(class_dir):
        raise DatasetLayoutError(
            f'split folder {class_dir!r} is missing: class indices come from its sorted class '
            f'folders (expected {class_dir}/<class name>/<file>)')
    return class_folder_names(class_dir)


@dataclass
class ScanResult:
    """What scanning one split found."""
    samples: List[Sample] = field(default_factory=list)
    empty_classes: List[str] = field(default_factory=list)  # class folders without a sample
    ignored: List[str] = field(default_factory=list)  # files whose extension is not taken
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, why left out)

    def warn(self, split_dir: str, kind: str, extensions: Sequence[str]) -> None:
        """Log one warning per kind of thing that was left out or is missing."""
        if self.skipped:
            print_log(f'{split_dir}: left out {len(self.skipped)} path(s) under the link rule '
                      '(loops, links into another class, files reached twice or from two '
                      f'classes; README "Datasets"):\n{describe(self.skipped)}',
                      logger='current', level=30)
        if self.ignored:
            print_log(f'{split_dir}: ignored {len(self.ignored)} file(s) without a {kind} '
                      f'extension ({", ".join(extensions)}), e.g. {self.ignored[0]!r}',
                      logger='current', level=30)
        if self.empty_classes:
            print_log(f'{split_dir}: {len(self.empty_classes)} class folder(s) hold no {kind}: '
                      f'{self.empty_classes}', logger='current', level=30)


def _is_within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _file_key(entry: os.DirEntry) -> Optional[Tuple[int, int]]:
    try:
        info = entry.stat()  # follows links: the identity of the file itself
    except OSError:
        return None  # a broken link: kept as a sample so that the file check names it
    return info.st_dev, info.st_ino


def scan_split(split_dir: str, class_to_index: Dict[str, int],
               extensions: Sequence[str]) -> ScanResult:
    """Collect ``(path, class index)`` for every file under ``split_dir/<class>/``.

    Paths are given as reached (through links, not resolved). See the module docstring for the
    rules; raises :class:`DatasetLayoutError` for unknown or overlapping class folders.
    """
    names = class_folder_names(split_dir)
    unknown = [name for name in names if name not in class_to_index]
    if unknown:
        raise DatasetLayoutError(
            f'{split_dir!r} has class folders that the training split does not have: '
            f'{unknown}; known classes: {sorted(class_to_index)}')
    real_class = {name: osp.realpath(osp.join(split_dir, name)) for name in names}
    for name in names:
        for other in names:
            if other != name and _is_within(real_class[other], real_class[name]):
                relation = 'the same folder as' if real_class[other] == real_class[name] \
                    else 'a folder inside'
                raise DatasetLayoutError(
                    f'class folder {osp.join(split_dir, other)!r} is {relation} '
                    f'{osp.join(split_dir, name)!r} (both resolve into {real_class[name]!r}): '
                    'every file must belong to one class folder')

    suffixes = tuple(ext.lower() for ext in extensions)
    result = ScanResult()
    found: Dict[str, List[Tuple[str, Optional[Tuple[int, int]]]]] = {}
    for name in names:
        own = real_class[name]
        others = [real for other, real in real_class.items() if other != name]
        files: List[Tuple[str, Optional[Tuple[int, int]]]] = []
        # Per class: a folder linked from two classes is walked from both, and its files are
        # then left out of both by the rule on files below, whatever the order of the classes.
        walked: Set[str] = {own}
        # Depth-first; each entry carries the real paths of the folders above it (the chain),
        # so that a link back into one of them is seen as the cycle it is.
        stack = [(osp.join(split_dir, name), (own,))]
        while stack:
            folder, chain = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as err:
                result.skipped.append((folder, f'cannot list: {err.strerror or err}'))
                continue
            subfolders = []
            for entry in entries:
                if entry.name.startswith('.'):
                    continue
                if entry.is_dir():
                    real = osp.realpath(entry.path)
                    if entry.is_symlink():
                        why = _link_problem(real, chain, others, walked)
                        if why:
                            result.skipped.append((entry.path, why))
                            continue
                    if real in walked:
                        result.skipped.append((entry.path, f'folder already walked ({real})'))
                        continue
                    walked.add(real)
                    subfolders.append((entry.path, chain + (real,)))
                elif entry.name.lower().endswith(suffixes):
                    files.append((entry.path, _file_key(entry)))
                elif entry.is_file() or entry.is_symlink():
                    result.ignored.append(entry.path)
            stack.extend(reversed(subfolders))
        found[name] = files

    owners: Dict[Tuple[int, int], Set[str]] = {}
    for name, files in found.items():
        for _, key in files:
            if key is not None:
                owners.setdefault(key, set()).add(name)
    taken: Dict[Tuple[int, int], str] = {}
    for name in names:
        kept = 0
        for path, key in sorted(found[name]):
            if key is not None and len(owners[key]) > 1:
                result.skipped.append(
                    (path, f'the same file is in class folders {sorted(owners[key])}: no '
                           'single label, left out of each'))
                continue
            if key is not None and key in taken:
                result.skipped.append((path, f'the same file as {taken[key]}: kept once'))
                continue
            if key is not None:
                taken[key] = path
            result.samples.append((path, class_to_index[name]))
            kept += 1
        if not kept:
            result.empty_classes.append(osp.join(split_dir, name))
    result.samples.sort(key=lambda sample: (sample[1], sample[0]))
    return result


def _link_problem(real: str, chain: Sequence[str], other_classes: Sequence[str],
                  walked: Set[str]) -> Optional[str]:
    """Why a folder link resolving to ``real`` must not be followed, or None."""
    if any(_is_within(above, real) for above in chain):
        return f'link loop: leads back to {real!r}, a folder it is inside'
    for other in other_classes:
        if _is_within(real, other):
            return f'leads into another class folder ({other!r})'
        if _is_within(other, real):
            return f'leads to {real!r}, which holds another class folder ({other!r})'
    if real in walked:
        return f'leads to a folder already walked ({real!r})'
    return None
