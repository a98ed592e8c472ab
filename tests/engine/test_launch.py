"""mmvit_plugin.engine.launch: CPU distributed glue, config fixes, bf16 autocast, seeding,
layer-wise lr decay."""
import socket

import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

import mmvit_plugin  # noqa: F401
from mmvit_plugin.engine import launch

TINY_ARCH = dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3), img_size=(32, 32))


def test_slurm_env_is_translated_for_torch():
    env = launch.slurm_to_torch_env(
        dict(SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_LOCALID='1'), master_addr='node7')
    assert env == dict(RANK='5', WORLD_SIZE='8', LOCAL_RANK='1', MASTER_ADDR='node7',
                       MASTER_PORT='29500')
    with pytest.raises(RuntimeError, match='SLURM_NTASKS'):
        launch.slurm_to_torch_env(dict(SLURM_PROCID='0'), master_addr='node7')


def test_dataloader_defaults_respect_worker_count_and_user_values():
    cfg = Config(dict(
        default_scope='mmpretrain',
        train_dataloader=dict(num_workers=0, persistent_workers=True),
        val_dataloader=dict(num_workers=2),
        test_dataloader=dict(num_workers=2, persistent_workers=False)))
    launch.apply_dataloader_defaults(cfg)
    assert cfg.train_dataloader.persistent_workers is False  # torch rejects it with 0 workers
    assert cfg.val_dataloader.persistent_workers is True
    assert cfg.test_dataloader.persistent_workers is False  # the user's choice is kept
    assert cfg.val_dataloader.pin_memory is torch.cuda.is_available()
    assert cfg.val_dataloader.collate_fn == dict(type='default_collate')


def test_dataloader_defaults_leave_mmaction2_collate_to_the_runner():
    cfg = Config(dict(default_scope='mmaction', val_dataloader=dict(num_workers=0)))
    launch.apply_dataloader_defaults(cfg)
    assert 'collate_fn' not in cfg.val_dataloader  # the Runner's pseudo_collate, as mmaction2 needs


def test_resume_and_auto_scale_lr_switches():
    cfg = Config(dict(auto_scale_lr=dict(base_batch_size=256)))
    launch.apply_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from is None
    launch.apply_resume(cfg, 'work/epoch_3.pth')
    assert cfg.load_from == 'work/epoch_3.pth'
    launch.apply_auto_scale_lr(cfg)
    assert cfg.auto_scale_lr.enable is True
    with pytest.raises(ValueError, match='base_batch_size'):
        launch.apply_auto_scale_lr(Config(dict()))


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
def test_amp_on_cpu_trains_under_bfloat16_autocast():
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1))))
    assert 'bfloat16' in launch.apply_amp(cfg)
    model = torch.nn.Linear(4, 2)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(wrapper).__name__ == 'CPUAutocastOptimWrapper'
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().pow(2).mean())
    assert model.weight.dtype == torch.float32 and not torch.equal(before, model.weight)
    with pytest.raises(ValueError, match='only OptimWrapper'):
        launch.apply_amp(Config(dict(optim_wrapper=dict(type='MyWrapper'))))


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU path')
def test_prepare_distributed_without_gpu_uses_gloo_and_no_device_ids(monkeypatch):
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        monkeypatch.setenv('MASTER_PORT', str(probe.getsockname()[1]))
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl')),
                      model_wrapper_cfg=dict(find_unused_parameters=True)))
    try:
        launch.prepare_distributed(cfg, 'pytorch')
        assert torch_dist.is_initialized() and torch_dist.get_backend() == 'gloo'
        assert cfg.env_cfg.dist_cfg.backend == 'gloo'
        assert cfg.model_wrapper_cfg.device_ids is None
        assert cfg.model_wrapper_cfg.find_unused_parameters is True
        assert cfg.launcher == 'pytorch'
    finally:
        launch.shutdown_distributed()
    assert not torch_dist.is_initialized()
    with pytest.raises(ValueError, match="launcher 'lsf' is not supported"):
        launch.init_cpu_process_group('lsf')
    # mpi is supported: without mpirun's variables it says what is missing
    with pytest.raises(RuntimeError, match='OMPI_COMM_WORLD_RANK is not set'):
        launch.init_cpu_process_group('mpi')
    env = launch.mpi_to_torch_env(dict(OMPI_COMM_WORLD_RANK='1', OMPI_COMM_WORLD_SIZE='2',
                                       OMPI_COMM_WORLD_LOCAL_RANK='1', MASTER_ADDR='h0'))
    assert env == dict(RANK='1', WORLD_SIZE='2', LOCAL_RANK='1', MASTER_ADDR='h0',
                       MASTER_PORT='29500')
