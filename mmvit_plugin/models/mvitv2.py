"""Placeholder while the backbone is being written."""


class MViTv2:
    pass


class MViTv2Arch:
    pass
