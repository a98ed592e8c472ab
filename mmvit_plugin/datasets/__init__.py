"""Datasets and transforms: one class-folder scanner, image and video class-folder datasets."""
from . import class_folders, image_folder, transforms, video_folder, video_probe  # noqa: F401
