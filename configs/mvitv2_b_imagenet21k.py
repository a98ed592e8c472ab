# MViTv2-B for ImageNet-21k (19,168 classes, cls token): the model of the official
# in21k checkpoint, with the ImageNet-1k data settings and recipe (no in21k training recipe was
# published). Data: data/imagenet21k/{train,val}/<wnid>/ class folders.
#   python tools/test.py configs/mvitv2_b_imagenet21k.py CHECKPOINT
_base_ = [
    './_base_/models/mvitv2_base_in21k.py',
    './_base_/datasets/image_imagenet_224.py',
    './_base_/schedules/image_adamw_300e.py',
    './_base_/image_runtime.py',
]
data_root = 'data/imagenet21k'

model = dict(
    backbone=dict(drop_path_rate=0.3),
    head=dict(loss=dict(_delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
                        mode='original')),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = dict(dataset=dict(data_root=data_root))
