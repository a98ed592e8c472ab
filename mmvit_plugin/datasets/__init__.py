"""Datasets and transforms: image class folders (mmpretrain), video class folders (mmaction2)."""
from . import image_folder, transforms, video_folder  # noqa: F401
