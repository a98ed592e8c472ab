# configs/quickstart_video.py initialised from the image quickstart's weights
# (configs/quickstart_image.py, trained by tools/quickstart.sh): WeightInflationHook inflates
# the 2D patch embedding and pooling kernels into 3D, copies the blocks, keeps the 10-class head
# (same classes, same order) and creates the temporal relative-position tables, when training
# starts. Training otherwise identical to the scratch run, for a fair comparison.
#   python tools/train.py configs/quickstart_video_inflated.py \
#       --cfg-options "custom_hooks.1.checkpoint=work_dirs/quickstart_image/epoch_5.pth"
_base_ = ['./quickstart_video.py']

custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='WeightInflationHook', checkpoint='work_dirs/quickstart_image/epoch_5.pth',
         method='average'),
]
