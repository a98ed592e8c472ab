# ImageNet as class folders (data/imagenet/{train,val}/<wnid>/*.JPEG), 224x224, with the
# facebookresearch/mvit training augmentation (AUG and MIXUP defaults of mvit/config/defaults.py):
# RandomResizedCrop 224 bicubic (scale 0.08-1), flip 0.5, RandAugment rand-m9-n6-mstd0.5-inc1,
# RandomErasing 0.25 in 'pixel' mode (per-pixel normal noise); test: resize the short side to
# 224 / 0.875 = 256 (bicubic), center crop 224. Pixels are BGR until the data preprocessor.
dataset_type = 'ImageClassFolder'
data_root = 'data/imagenet'

# num_classes is not set here: SyncedImageClassifier (configs/_base_/models) copies the head's
# model.head.num_classes into it, so the class count is one setting.
data_preprocessor = dict(
    mean=[123.675, 116.28, 103.53],  # RGB, 0-255
    std=[58.395, 57.12, 57.375],
    to_rgb=True,
)
bgr_mean = data_preprocessor['mean'][::-1]
bgr_std = data_preprocessor['std'][::-1]

train_pipeline = [
    dict(type='LoadImageChecked'),
    dict(type='RandomResizedCrop', scale=224, crop_ratio_range=(0.08, 1.0),
         aspect_ratio_range=(3. / 4., 4. / 3.), backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=6, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='RandomErasing', erase_prob=0.25, mode='rand', min_area_ratio=0.02,
         max_area_ratio=1 / 3, fill_color=bgr_mean, fill_std=bgr_std),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageChecked'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=256,  # per process; the recipe's total batch is 2048 (8 x 256)
    num_workers=8,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split='train',
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=8,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split='val',
                 pipeline=test_pipeline),
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
# ImageNet's test labels are not public: testing reads the val split.
test_dataloader = val_dataloader
test_evaluator = val_evaluator
