# MViTv2-B 32x3 on Kinetics-400 from scratch: SlowFast's configs/Kinetics/MVITv2_B_32x3.yaml
# (82.9 top-1 with 5 clips x 1 crop in the paper). 51.2M parameters, 225 GFLOPs per view.
_base_ = [
    '_base_/models/mvitv2_base_32x3.py',
    '_base_/datasets/video_kinetics400_32x3.py',
    '_base_/schedules/video_adamw_cosine_200e.py',
    '_base_/video_runtime.py',
]

model = dict(
    # drop path 0.3 comes with the arch; Mixup 0.8 / CutMix 1.0, one of them per batch
    data_preprocessor=dict(
        blending=dict(
            type='RandomBatchAugment',
            augments=[
                dict(type='MixupBlending', alpha=0.8, num_classes=400),
                dict(type='CutmixBlending', alpha=1.0, num_classes=400),
            ])),
    cls_head=dict(label_smooth_eps=0.1))
