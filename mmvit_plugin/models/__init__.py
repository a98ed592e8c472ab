from .mvitv2 import MViTv2, MViTv2Arch  # noqa: F401
