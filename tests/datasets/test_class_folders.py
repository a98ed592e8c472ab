"""The class-folder scanner: one link rule, order and error type for images and videos."""
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from PIL import Image

from mmvit_plugin.datasets import class_folders
from mmvit_plugin.datasets.class_folders import DatasetLayoutError, scan_split
from mmvit_plugin.datasets.image_folder import ImageClassFolder
from mmvit_plugin.datasets.video_folder import VideoFolderDataset


def write_image(path: str) -> str:
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(np.full((6, 5, 3), 9, np.uint8)).save(path)
    return path


def write_video(path: str) -> str:
    os.makedirs(osp.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 10, (32, 24))
    for t in range(4):
        writer.write(np.full((24, 32, 3), 40 * t, np.uint8))
    writer.release()
    return path


KINDS = {
    'image': (write_image, '.png',
              lambda root, split: ImageClassFolder(data_root=root, split=split),
              lambda ds, i: ds.get_data_info(i)['img_path'],
              lambda ds, i: ds.get_data_info(i)['gt_label']),
    'video': (write_video, '.mp4',
              lambda root, split: VideoFolderDataset(data_root=root, split=split,
                                                     test_mode=False, check_workers=2),
              lambda ds, i: ds.get_data_info(i)['filename'],
              lambda ds, i: ds.get_data_info(i)['label']),
}


@pytest.fixture
def logged(monkeypatch):
    messages = []
    monkeypatch.setattr(class_folders, 'print_log',
                        lambda msg, *args, **kwargs: messages.append(msg))
    return messages


def linked_tree(tmp_path, write, ext):
    """train/cat and train/dog with every kind of link the rule covers."""
    root = str(tmp_path / 'data')
    train = osp.join(root, 'train')
    write(f'{train}/cat/a{ext}')
    write(f'{train}/cat/b{ext}')
    write(f'{train}/dog/c{ext}')
    write(f'{train}/dog/d{ext}')
    outside = str(tmp_path / 'elsewhere')
    write(f'{outside}/more/e{ext}')
    os.symlink('..', f'{train}/cat/loop')  # the split folder: a loop holding both classes
    os.symlink('.', f'{train}/dog/self')  # a loop onto itself
    os.symlink('../cat', f'{train}/dog/cats')  # into another class folder
    os.symlink(f'{outside}/more', f'{train}/cat/extra')  # outside the dataset: followed
    os.symlink(f'c{ext}', f'{train}/dog/dup{ext}')  # the same file twice in one class
    os.link(f'{train}/cat/a{ext}', f'{train}/dog/hard{ext}')  # one file in two classes
    return root, train


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_links_loops_and_duplicates_follow_one_rule(tmp_path, logged, kind):
    write, ext, build, path_of, label_of = KINDS[kind]
    root, train = linked_tree(tmp_path, write, ext)
    dataset = build(root, 'train')
    samples = [(osp.relpath(path_of(dataset, i), train), label_of(dataset, i))
               for i in range(len(dataset))]
    # Before: images walked cat/loop -> .. and labelled dog's files cat (and looped); videos
    # ignored every linked folder without a word.
    assert samples == [(f'cat/b{ext}', 0), (f'cat/extra/e{ext}', 0),
                       (f'dog/c{ext}', 1), (f'dog/d{ext}', 1)]
    warning = next(m for m in logged if 'under the link rule' in m)
    assert 'left out 6 path(s)' in warning
    for path, why in (('cat/loop', 'link loop'), ('dog/self', 'link loop'),
                      ('dog/cats', 'leads into another class folder'),
                      (f'dog/dup{ext}', f'the same file as {train}/dog/c{ext}'),
                      (f'cat/a{ext}', "the same file is in class folders ['cat', 'dog']"),
                      (f'dog/hard{ext}', "the same file is in class folders ['cat', 'dog']")):
        assert f'{osp.join(train, path)}: {why}' in warning, (path, warning)


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_class_folders_that_are_one_folder_are_an_error(tmp_path, kind):
    write, ext, build, _, _ = KINDS[kind]
    root = str(tmp_path / 'data')
    write(f'{root}/train/cat/a{ext}')
    write(f'{root}/train/dog/b{ext}')
    os.symlink('cat', f'{root}/train/kitty')
    with pytest.raises(DatasetLayoutError, match=r"kitty' is the same folder as .*cat'"):
        build(root, 'train')


@pytest.mark.parametrize('kind', sorted(KINDS))
def test_layout_errors_have_one_type_for_both(tmp_path, kind):
    write, ext, build, _, _ = KINDS[kind]
    root = str(tmp_path / 'data')
    write(f'{root}/train/cat/a{ext}')
    write(f'{root}/val/fox/b{ext}')
    with pytest.raises(DatasetLayoutError, match=r"training split does not have: \['fox'\]"):
        build(root, 'val')
    with pytest.raises(DatasetLayoutError, match=r"split folder .*holdout' does not exist"):
        build(root, 'holdout')
    with pytest.raises(DatasetLayoutError, match=r'dataset root .*nowhere'):
        build(str(tmp_path / 'nowhere'), 'train')


def test_a_linked_class_folder_is_one_class(tmp_path):
    outside = str(tmp_path / 'pool' / 'cats')
    write_image(f'{outside}/x.png')
    write_image(f'{outside}/deeper/y.png')
    split = str(tmp_path / 'train')
    write_image(f'{split}/dog/z.png')
    os.symlink(outside, f'{split}/cat')
    scan = scan_split(split, {'cat': 0, 'dog': 1}, ('.png',))
    assert [(osp.relpath(p, split), label) for p, label in scan.samples] == [
        ('cat/deeper/y.png', 0), ('cat/x.png', 0), ('dog/z.png', 1)]
    assert scan.skipped == [] and scan.ignored == [] and scan.empty_classes == []


def test_broken_link_is_kept_for_the_file_check_to_name(tmp_path):
    split = str(tmp_path / 'data' / 'train')
    write_image(f'{split}/cat/a.png')
    os.symlink('missing.png', f'{split}/cat/gone.png')
    with pytest.raises(DatasetLayoutError, match=r'gone\.png: FileNotFoundError'):
        ImageClassFolder(data_root=str(tmp_path / 'data'))
