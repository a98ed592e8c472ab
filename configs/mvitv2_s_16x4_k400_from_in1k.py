# MViTv2-S 16x4 on Kinetics-400, initialised from the official IN-1K MViTv2-S image weights
# (MViTv2_S_in1k.pyth of facebookresearch/mvit, or any other supported format): WeightInflationHook
# inflates the 2D patch embedding and pooling kernels into 3D when training starts, copies the
# blocks, interpolates the spatial relative-position tables, creates the temporal ones and drops
# the image head. Data and augmentation as in configs/mvitv2_s_16x4_k400.py.
#   python tools/train.py configs/mvitv2_s_16x4_k400_from_in1k.py \
#       --cfg-options "default_hooks.weight_inflation.checkpoint=/path/to/MViTv2_S_in1k.pyth"
_base_ = ['./mvitv2_s_16x4_k400.py']

default_hooks = dict(
    weight_inflation=dict(type='WeightInflationHook', checkpoint='checkpoints/MViTv2_S_in1k.pyth'))

# SlowFast publishes no Kinetics recipe that starts from ImageNet weights: this schedule is our
# choice, not an official one. The scratch recipe's optimiser at half its learning rate (8e-4
# for 512 clips), 10 warm-up epochs, cosine down to 1e-6 at epoch 100.
base_lr = 8e-4
optim_wrapper = dict(optimizer=dict(lr=base_lr))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / base_lr, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=90, eta_min_ratio=1e-6 / base_lr, by_epoch=True,
         begin=10, end=100, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=100, val_interval=5)
