"""ImageClassFolder: class indices, split checks, unreadable files, colour conversion."""
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import mmvit_plugin.datasets.class_folders as class_folders
import mmvit_plugin.datasets.image_folder as image_folder
from mmvit_plugin.datasets.class_folders import DatasetLayoutError
from mmvit_plugin.datasets.image_folder import (
    ImageClassFolder,
    LoadImageChecked,
    check_image_header,
)


def _save(path: str, array: np.ndarray, mode: str = None) -> str:
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def _rgb(value: int) -> np.ndarray:
    return np.full((6, 5, 3), value, dtype=np.uint8)


@pytest.fixture
def root(tmp_path):
    """train: cat (2), dog (1), eel (1); val: cat, dog; test: eel only."""
    base = str(tmp_path / 'data')
    _save(f'{base}/train/cat/a.png', _rgb(10))
    _save(f'{base}/train/cat/sub/b.jpg', _rgb(20))  # nested folders are walked
    _save(f'{base}/train/dog/c.png', _rgb(30))
    _save(f'{base}/train/eel/d.PNG', _rgb(40))  # extension case does not matter
    with open(f'{base}/train/dog/notes.txt', 'w') as f:  # not an image extension: ignored
        f.write('x')
    _save(f'{base}/val/cat/e.png', _rgb(50))
    _save(f'{base}/val/dog/f.png', _rgb(60))
    _save(f'{base}/test/eel/g.png', _rgb(70))
    return base


@pytest.fixture
def warnings_log(monkeypatch):
    messages = []
    for module in (image_folder, class_folders):
        monkeypatch.setattr(module, 'print_log',
                            lambda msg, logger=None, level=None: messages.append(msg))
    return messages


def _labels(dataset):
    return [(osp.basename(dataset.get_data_info(i)['img_path']),
             dataset.get_data_info(i)['gt_label']) for i in range(len(dataset))]


def test_class_indices_come_from_train_and_hold_for_every_split(root):
    train = ImageClassFolder(data_root=root, split='train')
    val = ImageClassFolder(data_root=root, split='val')
    test = ImageClassFolder(data_root=root, split='test')
    assert train.metainfo['classes'] == ('cat', 'dog', 'eel')
    assert val.metainfo['classes'] == test.metainfo['classes'] == ('cat', 'dog', 'eel')
    assert _labels(train) == [('a.png', 0), ('b.jpg', 0), ('c.png', 1), ('d.PNG', 2)]
    assert _labels(val) == [('e.png', 0), ('f.png', 1)]
    assert _labels(test) == [('g.png', 2)]  # eel keeps index 2 although cat, dog are absent


def test_missing_root_split_and_empty_split_are_named(root, tmp_path):
    missing = str(tmp_path / 'nowhere')
    with pytest.raises(DatasetLayoutError, match='nowhere'):
        ImageClassFolder(data_root=missing)
    with pytest.raises(DatasetLayoutError, match=r'holdout.*does not exist'):
        ImageClassFolder(data_root=root, split='holdout')
    os.makedirs(f'{root}/empty/cat')
    with pytest.raises(DatasetLayoutError, match=r'no images found in .*empty'):
        ImageClassFolder(data_root=root, split='empty')
    no_train = str(tmp_path / 'only_val')
    _save(f'{no_train}/val/cat/a.png', _rgb(1))
    with pytest.raises(DatasetLayoutError, match=r'only_val/train.*missing'):
        ImageClassFolder(data_root=no_train, split='val')


def test_unknown_class_in_val_is_an_error_naming_it(root):
    _save(f'{root}/val/fox/h.png', _rgb(1))
    with pytest.raises(DatasetLayoutError, match=r"class folders that the training split does "
                       r"not have: \['fox'\]"):
        ImageClassFolder(data_root=root, split='val')


def test_empty_class_folder_warns_with_its_path(root, warnings_log):
    os.makedirs(f'{root}/train/fox')
    dataset = ImageClassFolder(data_root=root, split='train')
    assert dataset.metainfo['classes'] == ('cat', 'dog', 'eel', 'fox')
    assert len(dataset) == 4
    assert any('hold no image' in m and osp.join(root, 'train', 'fox') in m
               for m in warnings_log)


def _make_corrupt(root):
    bad_text = f'{root}/train/dog/bad.png'
    with open(bad_text, 'w') as f:
        f.write('this is not a png')
    empty = f'{root}/train/cat/empty.jpg'
    open(empty, 'wb').close()
    return bad_text, empty


def test_corrupt_files_stop_before_training_and_are_listed(root):
    bad_text, empty = _make_corrupt(root)
    with pytest.raises(ValueError) as info:
        ImageClassFolder(data_root=root, split='train')
    message = str(info.value)
    assert '2 unusable image file(s) of 6' in message
    assert bad_text in message and empty in message and 'empty file' in message
    assert 'skip_corrupt=True' in message


def test_skip_corrupt_leaves_them_out_with_a_warning_and_count(root, warnings_log):
    bad_text, empty = _make_corrupt(root)
    dataset = ImageClassFolder(data_root=root, split='train', skip_corrupt=True)
    assert dataset.num_skipped == 2
    assert len(dataset) == 4
    paths = {dataset.get_data_info(i)['img_path'] for i in range(len(dataset))}
    assert bad_text not in paths and empty not in paths
    assert any('skipped 2 unusable' in m and bad_text in m for m in warnings_log)


def _truncate_in_pixel_data(png: str, out: str = None) -> str:
    """Cut a PNG a few bytes into its pixel data: the header still parses."""
    with open(png, 'rb') as f:
        data = f.read()
    out = out or png
    with open(out, 'wb') as f:
        f.write(data[:data.index(b'IDAT') + 6])
    return out


def test_header_check_is_header_only(root):
    good = f'{root}/train/cat/a.png'
    assert check_image_header(good) is None
    truncated = _truncate_in_pixel_data(good, f'{root}/train/cat/truncated.png')
    assert check_image_header(truncated) is None
    assert 'empty file' in check_image_header(_make_corrupt(root)[1])


def test_file_that_fails_to_decode_is_named_or_skipped(root, warnings_log):
    truncated = _truncate_in_pixel_data(f'{root}/train/cat/a.png')
    pipeline = [dict(type='LoadImageChecked')]
    strict = ImageClassFolder(data_root=root, split='train', pipeline=pipeline)
    with pytest.raises(ValueError, match=r'cannot decode image .*a\.png'):
        strict[0]
    lenient = ImageClassFolder(data_root=root, split='train', pipeline=pipeline,
                               skip_corrupt=True)
    sample = lenient[0]  # training mode: another sample is drawn instead
    assert sample['img_path'] != truncated
    assert any('fails to decode' in m and truncated in m for m in warnings_log)


def test_grayscale_rgba_and_16bit_become_3_channel_8bit(tmp_path):
    gray = _save(str(tmp_path / 'gray.png'), np.full((4, 3), 77, np.uint8), mode='L')
    rgba_pixels = np.zeros((4, 3, 4), np.uint8)
    rgba_pixels[..., 0], rgba_pixels[..., 1], rgba_pixels[..., 2] = 200, 100, 50
    rgba_pixels[..., 3] = 10  # nearly transparent: colour is kept, alpha dropped
    rgba = _save(str(tmp_path / 'rgba.png'), rgba_pixels, mode='RGBA')
    deep = str(tmp_path / 'gray16.png')
    cv2.imwrite(deep, np.full((4, 3), 65535, np.uint16))
    load = LoadImageChecked()
    for path, expected_bgr in ((gray, (77, 77, 77)), (rgba, (50, 100, 200)),
                               (deep, (255, 255, 255))):
        image = load(dict(img_path=path))['img']
        assert image.shape == (4, 3, 3) and image.dtype == np.uint8, path
        assert tuple(int(v) for v in image[0, 0]) == expected_bgr, path


def test_reserved_arguments_are_rejected(root):
    with pytest.raises(ValueError, match='ann_file'):
        ImageClassFolder(data_root=root, ann_file='list.txt')
    with pytest.raises(ValueError, match='data_root is empty'):
        ImageClassFolder(data_root='')


def test_evaluation_leaves_a_corrupt_image_out_and_never_substitutes(tmp_path, warnings_log):
    """9 val images, 1 cut short after its header: the metric is over the 8 readable ones."""
    from mmengine.dataset import default_collate
    from mmpretrain.evaluation import Accuracy
    from torch.utils.data import DataLoader
    root = str(tmp_path / 'data')
    _save(f'{root}/train/cat/t.png', _rgb(10))
    _save(f'{root}/train/dog/t.png', _rgb(200))
    for i in range(5):
        _save(f'{root}/val/cat/{i}.png', _rgb(10))
    for i in range(4):
        _save(f'{root}/val/dog/{i}.png', _rgb(200))
    bad = _truncate_in_pixel_data(f'{root}/val/dog/0.png')  # its header still reads
    pipeline = [dict(type='LoadImageChecked'), dict(type='PackInputs')]
    dataset = ImageClassFolder(data_root=root, split='val', pipeline=pipeline,
                               skip_corrupt=True)
    assert dataset.test_mode  # every split but the class split evaluates
    assert len(dataset) == 8 and dataset.num_skipped == 1
    assert any('skipped 1 unusable' in m and bad in m and '8 remain' in m for m in warnings_log)

    metric = Accuracy(topk=(1,))
    loader = DataLoader(dataset, batch_size=3, collate_fn=default_collate)
    seen = []
    for batch in loader:
        # a stand-in model: bright images are dogs
        scores = [torch.tensor([0.0, 1.0]) if img.float().mean() > 100 else
                  torch.tensor([1.0, 0.0]) for img in batch['inputs']]
        samples = [dict(pred_score=s, gt_label=d.gt_label) for s, d in
                   zip(scores, batch['data_samples'])]
        seen.extend(d.img_path for d in batch['data_samples'])
        metric.process(batch, samples)
    assert len(metric.results) == 8 and bad not in seen and len(set(seen)) == 8
    assert metric.evaluate(len(dataset))['accuracy/top1'] == 100.0

    # without skip_corrupt the bad file stops evaluation, named
    strict = ImageClassFolder(data_root=root, split='val', pipeline=pipeline)
    index = next(i for i in range(len(strict)) if strict.get_data_info(i)['img_path'] == bad)
    with pytest.raises(ValueError, match=rf"cannot decode image '{bad}'"):
        strict[index]
    # a file that breaks after the up-front decode stops the run too: never substituted
    victim = dataset.get_data_info(0)['img_path']
    _truncate_in_pixel_data(victim)
    with pytest.raises(ValueError, match=rf"cannot decode image '{victim}'"):
        dataset[0]


QUICKSTART_PIPELINE = [dict(type='LoadImageChecked'),
                       dict(type='RandomCrop', crop_size=32, padding=2),
                       dict(type='PackInputs')]


def test_images_too_small_for_the_pipeline_are_named_before_training(tmp_path, warnings_log):
    root = str(tmp_path / 'data')
    for i in range(3):
        _save(f'{root}/train/cat/{i}.png', np.full((28, 28, 3), 50, np.uint8))
        _save(f'{root}/train/dog/{i}.png', np.full((28, 28, 3), 90, np.uint8))
    _save(f'{root}/train/cat/big.png', np.full((40, 50, 3), 50, np.uint8))  # crops to 32x32
    tiny = _save(f'{root}/train/dog/tiny.png', np.full((1, 1, 3), 90, np.uint8))
    small = _save(f'{root}/train/cat/small.png', np.full((16, 16, 3), 50, np.uint8))
    with pytest.raises(DatasetLayoutError) as info:
        ImageClassFolder(data_root=root, pipeline=QUICKSTART_PIPELINE)
    message = str(info.value)
    assert '2 unusable image file(s) of 9' in message
    assert (f'{tiny}: 1x1 image, too small for the pipeline: it gives a 5x5 input where '
            'other images give 32x32') in message
    assert f'{small}: 16x16 image, too small for the pipeline: it gives a 20x20' in message

    lenient = ImageClassFolder(data_root=root, pipeline=QUICKSTART_PIPELINE, skip_corrupt=True)
    assert len(lenient) == 7 and lenient.input_size == (32, 32)
    assert {path for path, _ in lenient.skipped} == {tiny, small}
    np.random.seed(0)
    before = np.random.rand()
    np.random.seed(0)
    ImageClassFolder(data_root=root, pipeline=QUICKSTART_PIPELINE, skip_corrupt=True)
    assert np.random.rand() == before  # the size check leaves the random streams alone

    # without the header check, loading the file names it (it used to fail in collate)
    unchecked = ImageClassFolder(data_root=root, pipeline=QUICKSTART_PIPELINE,
                                 check_images=False)
    index = next(i for i in range(len(unchecked))
                 if unchecked.get_data_info(i)['img_path'] == tiny)
    with pytest.raises(DatasetLayoutError, match=rf"image '{tiny}' \(1x1\) gives a 5x5 input "
                       'where the pipeline gives 32x32'):
        unchecked[index]
    assert unchecked[0]['inputs'].shape == (3, 32, 32)


def test_pipelines_whose_size_follows_the_image_are_not_size_checked(tmp_path):
    root = str(tmp_path / 'data')
    _save(f'{root}/train/cat/a.png', np.full((28, 40, 3), 50, np.uint8))
    _save(f'{root}/train/cat/b.png', np.full((2, 3, 3), 50, np.uint8))
    dataset = ImageClassFolder(data_root=root, pipeline=[
        dict(type='LoadImageChecked'), dict(type='ResizeEdge', scale=16, edge='short'),
        dict(type='PackInputs')])
    assert dataset.input_size is None and len(dataset) == 2
    assert dataset[1]['inputs'].shape == (3, 16, 24)


def test_pipeline_is_built_in_mmpretrain_scope_whatever_the_current_scope(root):
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmaction'):  # e.g. after a video config ran
        dataset = ImageClassFolder(data_root=root, split='val', pipeline=[
            dict(type='LoadImageChecked'), dict(type='PackInputs')])
        assert dataset[0]['inputs'].shape == (3, 6, 5)
