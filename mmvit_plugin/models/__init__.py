"""The MViTv2 backbone (images and video from one code path), registered in both hosts."""
from .mvitv2 import MViTv2, MViTv2Arch  # noqa: F401
