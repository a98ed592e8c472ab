"""The model index in a non-editable install (issue 11, point 7): a wheel ships the index and
the configs it names as package data, and mmpretrain lists and builds the models from there.

The wheel is built (offline, no build isolation) from a copy of the project's sources and
installed with ``pip install --no-deps --target``; a fresh interpreter sees only that copy.
"""
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SOURCES = ('mmvit_plugin', 'configs', 'setup.cfg', 'pyproject.toml', 'README.md', 'MANIFEST.in',
           'model-index.yml')


def _config_files():
    root = osp.join(REPO, 'configs')
    return {osp.relpath(osp.join(d, f), root) for d, _, files in os.walk(root) for f in files
            if f.endswith(('.py', '.yml'))}


def test_the_package_links_to_the_one_copy_of_index_and_configs():
    mim = osp.join(REPO, 'mmvit_plugin', '.mim')
    for name, target in (('configs', 'configs'), ('model-index.yml', 'model-index.yml')):
        assert osp.islink(osp.join(mim, name)), f'{mim}/{name} must be a symlink, not a copy'
        assert osp.realpath(osp.join(mim, name)) == osp.realpath(osp.join(REPO, target))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    base = tmp_path_factory.mktemp('wheel')
    source = base / 'source'
    source.mkdir()
    for name in SOURCES:
        path = osp.join(REPO, name)
        if osp.isdir(path):
            shutil.copytree(path, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns('__pycache__', '*.egg-info'))
        else:
            shutil.copy(path, source / name)
    done = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-index',
                           '--no-build-isolation', '-w', str(base / 'dist'), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = (base / 'dist').glob('mmvit_plugin-*.whl')
    return base, path


def test_wheel_holds_the_index_and_every_config_it_names(wheel):
    _, path = wheel
    prefix = 'mmvit_plugin/.mim/'
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        index = yaml.safe_load(archive.read(prefix + 'model-index.yml'))
        metafile = yaml.safe_load(archive.read(prefix + 'configs/metafile.yml'))
        with open(osp.join(REPO, 'configs', 'mvitv2_t_imagenet.py'), 'rb') as f:
            assert archive.read(prefix + 'configs/mvitv2_t_imagenet.py') == f.read()
    assert index['Import'] == ['configs/metafile.yml']
    shipped = {n[len(prefix + 'configs/'):] for n in names if n.startswith(prefix + 'configs/')}
    assert shipped == _config_files()  # _base_ included: every config builds from the wheel
    for model in metafile['Models']:
        assert prefix + model['Config'] in names, model['Name']


def test_wheel_install_lists_and_builds_the_mmvit_models(wheel, tmp_path):
    base, path = wheel
    target = base / 'target'
    done = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index',
                           '--target', str(target), str(path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    script = '''
import mmpretrain, mmvit_plugin
from mmvit_plugin.apis import config_and_weights
print('module', mmvit_plugin.__file__)
print('listed', ' '.join(mmpretrain.list_models('*mvitv2*')))
model = mmpretrain.get_model('mmvit-mvitv2-tiny_in1k')
print('built', type(model.backbone).__name__, sum(p.numel() for p in model.parameters()))
print('video', config_and_weights('mmvit-mvitv2-small-16x4_k400')[0].filename)
'''
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS='1')
    # run outside the repository, so neither its folder nor its editable install is imported
    done = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = dict(line.split(' ', 1) for line in done.stdout.splitlines()
                 if line.split(' ', 1)[0] in ('module', 'listed', 'built', 'video'))
    assert lines['module'].startswith(str(target))
    listed = set(lines['listed'].split())
    with open(osp.join(REPO, 'configs', 'metafile.yml')) as f:
        expected = {m['Name'].lower() for m in yaml.safe_load(f)['Models']}
    assert expected <= listed and 'mvitv2-tiny_3rdparty_in1k' in listed
    assert lines['built'] == 'MViTv2 24173320'
    assert lines['video'].startswith(str(target))
