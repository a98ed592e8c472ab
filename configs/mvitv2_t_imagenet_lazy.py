# MViTv2-T on ImageNet-1k, the same recipe as mvitv2_t_imagenet.py written as an mmengine
# pure-Python ("lazy import") config: every type is the imported class itself.
#   python tools/train.py configs/mvitv2_t_imagenet_lazy.py
# Pure-Python configs cannot inherit dict-style files, so everything is spelled out here.
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (
                            CheckpointHook,
                            DistSamplerSeedHook,
                            IterTimerHook,
                            LoggerHook,
                            ParamSchedulerHook,
)
from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper
from mmengine.visualization import LocalVisBackend
from mmpretrain.datasets import (
                            CenterCrop,
                            PackInputs,
                            RandAugment,
                            RandomErasing,
                            RandomFlip,
                            RandomResizedCrop,
                            ResizeEdge,
)
from mmpretrain.engine import VisualizationHook
from mmpretrain.evaluation import Accuracy
from mmpretrain.models import (
                            ClsDataPreprocessor,
                            CutMix,
                            LabelSmoothLoss,
                            LinearClsHead,
                            Mixup,
)
from mmpretrain.visualization import UniversalVisualizer
from torch.optim import AdamW

from mmvit_plugin.apis.num_classes import SyncedImageClassifier
from mmvit_plugin.datasets.image_folder import ImageClassFolder, LoadImageChecked
from mmvit_plugin.engine.hooks import CheckpointFormatHook, EpochSeedHook
from mmvit_plugin.models import MViTv2

default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmvit_plugin'], allow_failed_imports=False)

# Model ----------------------------------------------------------------------------------------
model = dict(
    type=SyncedImageClassifier,  # data_preprocessor.num_classes follows head.num_classes
    data_preprocessor=dict(type=ClsDataPreprocessor,
                           mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           to_rgb=True),
    backbone=dict(type=MViTv2, arch='tiny', out_type='avg_featmap', drop_path_rate=0.1),
    neck=None,
    head=dict(type=LinearClsHead, num_classes=1000, in_channels=768,
              loss=dict(type=LabelSmoothLoss, label_smooth_val=0.1, mode='original'),
              init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)),
    train_cfg=dict(augments=[dict(type=Mixup, alpha=0.8), dict(type=CutMix, alpha=1.0)]),
)

# Data -----------------------------------------------------------------------------------------
data_root = 'data/imagenet'
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type=LoadImageChecked),
    dict(type=RandomResizedCrop, scale=224, crop_ratio_range=(0.08, 1.0),
         aspect_ratio_range=(3. / 4., 4. / 3.), backend='pillow', interpolation='bicubic'),
    dict(type=RandomFlip, prob=0.5, direction='horizontal'),
    dict(type=RandAugment, policies='timm_increasing', num_policies=6, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[104, 116, 124], interpolation='bicubic')),
    dict(type=RandomErasing, erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type=PackInputs),
]
test_pipeline = [
    dict(type=LoadImageChecked),
    dict(type=ResizeEdge, scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type=CenterCrop, crop_size=224),
    dict(type=PackInputs),
]
train_dataloader = dict(
    batch_size=256,  # per process; total 2048 on 8 processes
    num_workers=8,
    sampler=dict(type=DefaultSampler, shuffle=True),
    dataset=dict(type=ImageClassFolder, data_root=data_root, split='train',
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    sampler=dict(type=DefaultSampler, shuffle=False),
    dataset=dict(type=ImageClassFolder, data_root=data_root, split='val',
                 pipeline=test_pipeline),
)
val_evaluator = dict(type=Accuracy, topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# Schedule (facebookresearch/mvit configs/MVITv2_T.yaml) ------------------------------------
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=AdamW, lr=2e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(flat_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2),
)
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-8 / 2.5e-4, end_factor=1.0, by_epoch=True, begin=0,
         end=70, convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min_ratio=1e-6 / 2.5e-4, by_epoch=True, begin=70,
         end=300, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=10)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=2048, enable=False)

# Runtime --------------------------------------------------------------------------------------
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=100),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type=DistSamplerSeedHook),
    visualization=dict(type=VisualizationHook, enable=False),
)
custom_hooks = [dict(type=EpochSeedHook), dict(type=CheckpointFormatHook)]
env_cfg = dict(cudnn_benchmark=False,
               mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
vis_backends = [dict(type=LocalVisBackend)]
visualizer = dict(type=UniversalVisualizer, vis_backends=vis_backends)
log_processor = dict(by_epoch=True, window_size=50)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
