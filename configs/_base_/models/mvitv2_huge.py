# MViTv2-huge image classifier (1000 classes), model part only.
model = dict(
    type='SyncedImageClassifier',  # ImageClassifier; data_preprocessor follows head.num_classes
    backbone=dict(type='MViTv2', arch='huge', out_type='cls_token'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1536,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)),
)
