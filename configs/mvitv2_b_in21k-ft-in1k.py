# Fine-tune the ImageNet-21k MViTv2-B (cls token) on ImageNet-1k from pretrained weights:
# backbone from an in21k checkpoint (any format mmvit_plugin.checkpoint reads: official .pyth,
# mmpretrain, timm, torchvision, or our own; the 19,168-class head is dropped), new 1000-class
# head. Lower lr, 30 epochs, layer-wise lr decay 0.9 (official layer numbering: patch embed 0,
# block i -> i + 1, head keeps the full lr).
# These hyper-parameters are this plugin's choice, not a published recipe.
#   tools/dist_train.sh configs/mvitv2_b_in21k-ft-in1k.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/mvitv2_b_in21k.pyth
_base_ = [
    './_base_/models/mvitv2_base_in21k.py',
    './_base_/datasets/image_imagenet_224.py',
    './_base_/schedules/image_adamw_300e.py',
    './_base_/image_runtime.py',
]
pretrained = 'checkpoints/mvitv2_b_in21k.pyth'

model = dict(
    backbone=dict(drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    head=dict(num_classes=1000,
              loss=dict(_delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1,
                        mode='original')),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)

train_dataloader = dict(batch_size=128)  # 8 processes x 128 = 1024
base_lr_per_256 = 2.5e-5
total_batch_size = 1024
optim_wrapper = dict(
    constructor='MViTv2LayerDecayOptimWrapperConstructor',
    optimizer=dict(lr=base_lr_per_256 * total_batch_size / 256),
    paramwise_cfg=dict(layer_decay_rate=0.9, flat_decay_mult=0.0, bias_decay_mult=0.0),
)
warmup_epochs = 5
max_epochs = 30
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=1e-2, by_epoch=True, begin=warmup_epochs,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=total_batch_size)
