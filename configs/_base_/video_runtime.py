# Runtime shared by the video (mmaction2) configs: scope, plugin import, hooks, logging.
default_scope = 'mmaction'
custom_imports = dict(imports=['mmvit_plugin'], allow_failed_imports=False)

default_hooks = dict(
    runtime_info=dict(type='RuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, ignore_last=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Written to a temporary file and renamed, old ones deleted last: a kill while saving
    # never loses the run (mmvit_plugin/engine/checkpointing.py).
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, save_best='auto', max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    sync_buffers=dict(type='SyncBuffersHook'),
    # Seeds every epoch (workers too) from (seed, epoch, rank): a resumed run replays an
    # uninterrupted one.
    epoch_seed=dict(type='EpochSeedHook'),
    # load_from (and tools/test.py CONFIG CKPT) takes every MViTv2 checkpoint format:
    # official .pyth, SlowFast, mmpretrain, mmaction2, timm, torchvision.
    checkpoint_format=dict(type='CheckpointFormatHook'),
    # Stops at the first NaN/Inf loss or gradient norm, naming the iteration.
    finite_check=dict(type='NonFiniteCheckHook'),
)
custom_hooks = []

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))

log_processor = dict(type='LogProcessor', window_size=20, by_epoch=True)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='ActionVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
