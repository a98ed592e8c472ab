# MViTv2-L on ImageNet-1k: the model of the official configs/test/MVITv2_L_test.yaml (no L
# training config was published) with the recipe shared by the official T/S/B configs:
# 300 epochs, total batch 2048 (8 processes x 256), AdamW lr 2e-3,
# wd 0.05, warmup 70 epochs, Mixup 0.8 / CutMix 1.0 (switch 0.5), label smoothing 0.1,
# RandAugment, RandomErasing 0.25, drop path 0.5. Also the test config of the official
# checkpoint (converted with tools/convert_checkpoint.py): resize 256, center crop 224.
#   tools/dist_train.sh configs/mvitv2_l_imagenet.py 8 [--auto-scale-lr]
#   python tools/test.py configs/mvitv2_l_imagenet.py CHECKPOINT
# L for ImageNet-1k keeps the width change in the MLP (dim_mul_in_att=False), as the official
# in1k checkpoint; the in21k L (mvitv2_l_imagenet21k.py) has it in the attention.
_base_ = [
    './_base_/models/mvitv2_large.py',
    './_base_/datasets/image_imagenet_224.py',
    './_base_/schedules/image_adamw_300e.py',
    './_base_/image_runtime.py',
]

model = dict(
    backbone=dict(drop_path_rate=0.5),
    head=dict(loss=dict(_delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
                        mode='original')),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
