# MViTv2-large-40x3 video recognizer (Kinetics-400), model part only.
model = dict(
    type='Recognizer3D',
    backbone=dict(type='MViTv2', arch='large-40x3', out_type='featmap_and_cls'),
    cls_head=dict(
        type='MViTHead',
        in_channels=1152,
        num_classes=400,
        dropout_ratio=0.5,
        with_cls_token=True,
        average_clips='prob'),
    data_preprocessor=dict(
        type='ActionDataPreprocessor',
        # SlowFast's L 40x3 normalises with ImageNet statistics (S and B use 0.45 / 0.225).
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        format_shape='NCTHW'),
)
