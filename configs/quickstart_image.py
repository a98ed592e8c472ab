# Quickstart: a very small MViTv2 (same backbone code, arch given as a dict) trained from
# scratch on Fashion-MNIST (28x28 grey, 10 classes) on 2 CPU cores.
#   python tools/data/prepare_fashion_mnist.py          # -> data/fashion_mnist/{train,val,test}
#   python tools/train.py configs/quickstart_image.py
#   python tools/test.py configs/quickstart_image.py work_dirs/quickstart_image/epoch_N.pth
# or all in one: bash tools/quickstart.sh
_base_ = ['./_base_/image_runtime.py']

data_root = 'data/fashion_mnist'
num_classes = 10
input_size = 32  # 28x28 images padded by 2 on each side: MViTv2 needs sides >= 32

model = dict(
    type='SyncedImageClassifier',  # data_preprocessor.num_classes follows head.num_classes
    backbone=dict(
        type='MViTv2',
        # Four stages on an 8x8 token grid (patch stride 4): 8x8 (1 block, width 48) ->
        # 4x4 (3 blocks, 96) -> 2x2 (1 block, 192) -> 1x1 (1 block, 384); 2.4M parameters.
        arch=dict(embed_dim=48, depth=6, num_heads=1, stage_starts=(1, 4, 5),
                  img_size=(input_size, input_size), drop_path_rate=0.0),
        out_type='avg_featmap'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=num_classes,
        in_channels=384,  # embed_dim doubled at each of the three stage starts
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, 5)),
)
data_preprocessor = dict(
    # Fashion-MNIST statistics (grey replicated to 3 channels).
    mean=[72.94, 72.94, 72.94],
    std=[90.02, 90.02, 90.02],
    to_rgb=False,
)

# No augmentation: four epochs are too few to overfit (flips and shifts cost accuracy here).
# Deterministic at test time for any image (same photo, same scores): the short side is resized
# to 28 and centre-cropped (a no-op on Fashion-MNIST's 28x28 images), then padded by 2 on each
# side; RandomCrop does that padding, and on the 32x32 padded image its one possible crop is it.
test_pipeline = [
    dict(type='LoadImageChecked'),
    dict(type='ResizeEdge', scale=28, edge='short', backend='cv2', interpolation='bilinear'),
    dict(type='CenterCrop', crop_size=28),
    dict(type='RandomCrop', crop_size=input_size, padding=2),
    dict(type='PackInputs'),
]
train_pipeline = test_pipeline

train_dataloader = dict(
    batch_size=128,
    num_workers=1,
    # Restarted workers every epoch keep resume-after-kill an exact replay (EpochSeedHook).
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='ImageClassFolder', data_root=data_root, split='train',
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=500,
    num_workers=1,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageClassFolder', data_root=data_root, split='val',
                 pipeline=test_pipeline),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = dict(
    batch_size=500,
    num_workers=1,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageClassFolder', data_root=data_root, split='test',
                 pipeline=test_pipeline),
)
test_evaluator = val_evaluator

# Edit max_epochs here rather than with --cfg-options: the lr schedule below reads it.
max_epochs = 4
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=3e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(flat_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=0.5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=0.5,
         end=max_epochs, convert_to_iter_based=True),
]
# The checked loop stretches the half-epoch warm-up to >= 2 iterations on a small dataset
# (or stops naming the dataset and batch sizes): a folder of any size trains.
train_cfg = dict(type='CheckedEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=128, enable=False)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=2,
                    save_best='auto'),
)
