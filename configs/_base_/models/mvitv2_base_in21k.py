# MViTv2-base-in21k image classifier (19168 classes), model part only.
model = dict(
    type='SyncedImageClassifier',  # ImageClassifier; data_preprocessor follows head.num_classes
    backbone=dict(type='MViTv2', arch='base-in21k', out_type='cls_token'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=19168,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02)),
)
