# Quickstart, video part: a very small 3D MViTv2 trained from scratch on "which item moves"
# clips built from Fashion-MNIST (tools/data/prepare_video_task.py): two items side by side,
# one drifting, one still; the label is the category of the moving one. 2 CPU cores.
#   python tools/data/prepare_video_task.py              # -> data/moving_fashion/{train,val,test}
#   python tools/train.py configs/quickstart_video.py
#   python tools/test.py configs/quickstart_video.py work_dirs/quickstart_video/epoch_N.pth
# The same model initialised from the image quickstart's weights: quickstart_video_inflated.py.
# Everything in one go: bash tools/quickstart_video.sh
_base_ = ['./_base_/video_runtime.py']

data_root = 'data/moving_fashion'
num_classes = 10
clip_len, frame_interval = 4, 2  # 4 of the 16 frames, every other one
clip_size = (32, 64)  # two 32x32 cells holding 28x28 items

model = dict(
    type='Recognizer3D',
    backbone=dict(
        type='MViTv2',
        # The image quickstart's arch (configs/quickstart_image.py) made 3D, so its weights
        # inflate into this model: tokens 2x8x16 (1 block, width 48) -> 2x4x8 (3 blocks, 96)
        # -> 2x2x4 (1 block, 192) -> 2x1x2 (1 block, 384).
        arch=dict(embed_dim=48, depth=6, num_heads=1, stage_starts=(1, 4, 5), video=True,
                  img_size=(clip_len, *clip_size), drop_path_rate=0.0),
        out_type='featmap'),
    cls_head=dict(
        type='MViTHead',
        in_channels=384,
        num_classes=num_classes,
        with_cls_token=False,  # mean of the last stage's tokens, as the image model does
        dropout_ratio=0.0,
        label_smooth_eps=0.1,
        average_clips='prob'),
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        # Fashion-MNIST statistics, the image quickstart's normalisation
        mean=[72.94, 72.94, 72.94],
        std=[90.02, 90.02, 90.02],
        format_shape='NCTHW'),
)

train_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=clip_len, frame_interval=frame_interval, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=clip_len, frame_interval=frame_interval, num_clips=1,
         test_mode=True),
    dict(type='DecordDecode'),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='VideoFolderDataset', data_root=data_root, split='train',
                 pipeline=train_pipeline))
# val/test loaders leave collate_fn unset: the Runner then batches with pseudo_collate
# (mmaction2's batching), and mmengine's inferencers, which look collate_fn up by name,
# accept the config.
val_dataloader = dict(
    batch_size=50,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='VideoFolderDataset', data_root=data_root, split='val',
                 pipeline=test_pipeline, test_mode=True))
test_dataloader = dict(
    batch_size=50,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='VideoFolderDataset', data_root=data_root, split='test',
                 pipeline=test_pipeline, test_mode=True))
val_evaluator = dict(type='AccMetric')
test_evaluator = val_evaluator

max_epochs = 3
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(flat_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=0.3,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=0.3,
         end=max_epochs, convert_to_iter_based=True),
]
# The checked loop stretches the warm-up to >= 2 iterations on a small dataset (or stops
# naming the dataset and batch sizes): a folder of any size trains.
train_cfg = dict(type='CheckedEpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1,
                 val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=32)

default_hooks = dict(
    logger=dict(interval=10),  # about 6 progress lines per epoch of 63 iterations
    checkpoint=dict(interval=1, max_keep_ckpts=3, save_best='auto'))
