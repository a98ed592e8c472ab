# Kinetics-400, 40-frame clips every 3 frames, 312x312 crops: the data part of
# SlowFast's configs/Kinetics/MVITv2_L_40x3_test.yaml, built from mmaction2's transforms and the
# plugin's ClipRandAugment. Layout: data_root/{train,val}/<class>/<video>; val doubles as the
# test set (Kinetics publishes no test labels). For mmaction2 list files set ann_file (paths
# relative to data_prefix.video) in the dataset dicts instead.
data_root = 'data/kinetics400'
dataset_type = 'VideoFolderDataset'
num_repeats = 2  # repeated augmentation: each video gives 2 differently augmented clips

train_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=40, frame_interval=3, num_clips=1),
    dict(type='DecordDecode'),
    # short side jittered in [356, 446], then RandAugment on whole frames as SlowFast does
    dict(type='RandomRescale', scale_range=(356, 446)),
    dict(type='ClipRandAugment', aa_type='rand-m7-n4-mstd0.5-inc1', interpolation='bicubic'),
    dict(type='RandomResizedCrop', area_range=(0.08, 1.0), aspect_ratio_range=(0.75, 1.3333)),
    dict(type='Resize', scale=(312, 312), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    # SlowFast's 'pixel' mode draws N(0, 1) after normalisation: mean +- std in pixel units.
    # mmaction2 erases one box in every frame; SlowFast draws a box per frame.
    dict(type='RandomErasing', erase_prob=0.25, mode='rand',
         fill_color=(123.675, 116.28, 103.53), fill_std=(58.395, 57.12, 57.375)),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
val_pipeline = [  # one centre view, to follow training cheaply
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=40, frame_interval=3, num_clips=1,
         test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 312)),
    dict(type='CenterCrop', crop_size=312),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
test_pipeline = [  # 5 clips x 3 crops; the head averages their probabilities
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=40, frame_interval=3, num_clips=5,
         test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 312)),
    dict(type='ThreeCrop', crop_size=312),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]

train_dataloader = dict(
    batch_size=8,  # videos per GPU; x2 repeats x 32 GPUs = 512 clips, the recipe's batch
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='repeat_pseudo_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        num_repeats=num_repeats,
        pipeline=train_pipeline))
# val/test loaders leave collate_fn unset: the Runner then batches with pseudo_collate
# (mmaction2's batching), and mmengine's inferencers, which look collate_fn up by name,
# accept the config.
val_dataloader = dict(
    batch_size=8,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline=val_pipeline,
        test_mode=True))
test_dataloader = dict(
    batch_size=1,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='val',
        pipeline=test_pipeline,
        test_mode=True))

val_evaluator = dict(type='AccMetric')
test_evaluator = val_evaluator
