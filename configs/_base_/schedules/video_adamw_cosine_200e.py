# Optimisation of SlowFast's configs/Kinetics/MVITv2_{S_16x4,B_32x3}.yaml: AdamW, lr 1.6e-3 for a
# total batch of 512 clips (256 videos x 2 repeats), weight decay 0.05 except on 1-D parameters
# (norms, biases), gradient L2 norm clipped at 1, 30 warm-up epochs from 1e-6 then a cosine down
# to 1e-6 at epoch 200, validation every 10 epochs.
base_lr = 1.6e-3
warmup_epochs = 30
max_epochs = 200

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(flat_decay_mult=0.0),
    clip_grad=dict(max_norm=1.0, norm_type=2))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / base_lr, by_epoch=True, begin=0,
         end=warmup_epochs, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min_ratio=1e-6 / base_lr,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]

# CheckedEpochBasedTrainLoop: mmengine's epoch loop that refuses a rank without data and fits
# the warm-up to the iterations an epoch has (at least 2), so the recipe runs on any data size.
train_cfg = dict(type='CheckedEpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1,
                 val_interval=10)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# lr above is for 256 videos per step (x2 repeated clips): `--auto-scale-lr` rescales it to the
# actual number of GPUs x videos per GPU.
auto_scale_lr = dict(enable=False, base_batch_size=256)
