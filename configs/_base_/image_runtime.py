# Runtime shared by the image configs (mmpretrain scope, plugin imported).
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmvit_plugin'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Written to a temporary file and renamed, old ones deleted last: a kill while saving
    # never loses the run (mmvit_plugin/engine/checkpointing.py).
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
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
    dist_cfg=dict(backend='nccl'),  # tools/train.py switches to gloo when there is no GPU
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=True, window_size=50)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
