# MViTv2-small image classifier (1000 classes), model part only.
model = dict(
    type='SyncedImageClassifier',  # ImageClassifier; data_preprocessor follows head.num_classes
    backbone=dict(type='MViTv2', arch='small', out_type='avg_featmap'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)),
)
