# MViTv2-B on ImageNet-1k with the official facebookresearch/mvit recipe
# (configs/MVITv2_B.yaml): 300 epochs, total batch 2048 (8 processes x 256), AdamW lr 2e-3,
# wd 0.05, warmup 70 epochs, Mixup 0.8 / CutMix 1.0 (switch 0.5), label smoothing 0.1,
# RandAugment, RandomErasing 0.25, drop path 0.3. Also the test config of the official
# checkpoint (converted with tools/convert_checkpoint.py): resize 256, center crop 224.
#   tools/dist_train.sh configs/mvitv2_b_imagenet.py 8 [--auto-scale-lr]
#   python tools/test.py configs/mvitv2_b_imagenet.py CHECKPOINT
_base_ = [
    './_base_/models/mvitv2_base.py',
    './_base_/datasets/image_imagenet_224.py',
    './_base_/schedules/image_adamw_300e.py',
    './_base_/image_runtime.py',
]

model = dict(
    backbone=dict(drop_path_rate=0.3),
    head=dict(loss=dict(_delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
                        mode='original')),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
