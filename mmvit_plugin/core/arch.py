"""MViTv2 architecture as data: variants, geometry, input-size checks and per-block specs.

Part of the framework-free core (no mmengine, mmcv, mmpretrain or mmaction2 imports), so
checkpoint code can read and compare architectures without building a model.
"""
import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .rel_pos import Size, rel_pos_table_length

NUM_STAGES = 4

# Geometry of the published models, per modality: (image, video).
_GEOMETRY_DEFAULTS: Dict[str, Tuple[Size, Size]] = {
    'patch_kernel': ((7, 7), (3, 7, 7)),
    'patch_stride': ((4, 4), (2, 4, 4)),
    'patch_padding': ((3, 3), (1, 3, 3)),
    'pool_kernel': ((3, 3), (3, 3, 3)),
    'q_stride': ((2, 2), (1, 2, 2)),  # at a stage start; time is never pooled
    'first_kv_stride': ((4, 4), (1, 8, 8)),
}
GEOMETRY_FIELDS = tuple(_GEOMETRY_DEFAULTS)
_DEFAULT_SIZE = ((224, 224), (16, 224, 224))


@dataclass(frozen=True)
class MViTv2Arch:
    """Size and geometry of an MViTv2 variant.

    ``stage_starts`` are the blocks where queries are pooled with ``q_stride`` and the width
    and head count double, so the model has four stages. The geometry fields (patch
    kernel/stride/padding, pooling kernel, query stride, first key/value stride) default to
    the published values of the modality (``video``); ``img_size`` (the training input size)
    defaults to 224 x 224 pixels (and 16 frames).
    """
    embed_dim: int
    depth: int
    num_heads: int
    stage_starts: Tuple[int, int, int]
    dim_mul_in_att: bool = True
    with_cls_token: bool = False
    video: bool = False
    img_size: Optional[Tuple[int, ...]] = None
    drop_path_rate: float = 0.1
    mlp_ratio: float = 4.0
    patch_kernel: Optional[Size] = None
    patch_stride: Optional[Size] = None
    patch_padding: Optional[Size] = None
    pool_kernel: Optional[Size] = None
    q_stride: Optional[Size] = None
    first_kv_stride: Optional[Size] = None

    def __post_init__(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f'MViTv2 arch field {field!r}: {why}')

        for name in ('embed_dim', 'depth', 'num_heads'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, f'must be a positive int, got {getattr(self, name)!r}')
        if self.embed_dim % self.num_heads:
            fail('embed_dim', f'{self.embed_dim} is not divisible by num_heads={self.num_heads}')
        starts = tuple(self.stage_starts)
        if len(starts) != NUM_STAGES - 1 or list(starts) != sorted(set(starts)) \
                or starts[0] < 1 or starts[-1] >= self.depth:
            fail('stage_starts', f'needs {NUM_STAGES - 1} increasing block indices in '
                 f'[1, depth={self.depth}), got {starts}')
        object.__setattr__(self, 'stage_starts', starts)
        ndim = 3 if self.video else 2
        for name, defaults in _GEOMETRY_DEFAULTS.items():
            value = getattr(self, name)
            value = defaults[self.video] if value is None else tuple(value)
            if len(value) != ndim or not all(isinstance(v, int) for v in value):
                fail(name, f"needs {ndim} ints for {'a video' if self.video else 'an image'} "
                     f'arch, got {value}')
            least = 0 if name == 'patch_padding' else 1
            if any(v < least for v in value):
                fail(name, f'entries must be >= {least}, got {value}')
            object.__setattr__(self, name, value)
        if not self.mlp_ratio > 0:
            fail('mlp_ratio', f'must be positive, got {self.mlp_ratio}')
        size = self.img_size if self.img_size is not None else _DEFAULT_SIZE[self.video]
        object.__setattr__(self, 'img_size', check_input_size(size, self))
        if not 0.0 <= self.drop_path_rate < 1.0:
            fail('drop_path_rate', f'must be in [0, 1), got {self.drop_path_rate}')

    @property
    def reduction(self) -> Size:
        """How much each input axis shrinks from the input to the last stage's grid."""
        pooled = [q ** (NUM_STAGES - 1) for q in self.q_stride]
        return tuple(p * q for p, q in zip(self.patch_stride, pooled))


def check_input_size(size: Union[int, Sequence[int]], arch: MViTv2Arch,
                     what: str = 'img_size') -> Size:
    """Normalise an input size to (H, W) or (T, H, W) and reject sizes ``arch`` cannot use.

    The smallest usable side is derived from the arch's patch stride and query stride (the last
    stage needs at least one cell); ``what`` names the size in the message.
    """
    video = arch.video
    want = 3 if video else 2
    if isinstance(size, int):
        if video:
            raise ValueError(f'{what}={size}: a video MViTv2 needs (frames, height, width)')
        size = (size, size)
    size = tuple(size)
    if len(size) != want or not all(isinstance(s, int) for s in size):
        layout = '(frames, height, width)' if video else '(height, width)'
        raise ValueError(f'{what}={size}: a {"video" if video else "image"} MViTv2 needs '
                         f'{want} ints {layout}')
    # The tables are sized with floor division, so the last stage needs at least one cell.
    names = ('frames', 'height', 'width')[-want:]
    for name, side, factor, patch in zip(names, size, arch.reduction, arch.patch_stride):
        if side < factor:
            why = (f'the patch stride is {patch} and later stages pool it by '
                   f'{factor // patch}' if factor != patch else f'the patch stride is {patch}')
            unit = 'frames' if name == 'frames' else 'pixels'
            raise ValueError(f'{what}={size}: {name} {side} is too small; {why}, so it needs '
                             f'at least {factor} {unit}')
    return size


def _image(embed_dim: int, depth: int, heads: int, starts: Tuple[int, int, int],
           drop_path: float, **kw) -> MViTv2Arch:
    return MViTv2Arch(embed_dim, depth, heads, starts, drop_path_rate=drop_path, **kw)


def _video(embed_dim: int, depth: int, heads: int, starts: Tuple[int, int, int],
           drop_path: float, size: Tuple[int, int, int]) -> MViTv2Arch:
    return MViTv2Arch(embed_dim, depth, heads, starts, with_cls_token=True, video=True,
                      img_size=size, drop_path_rate=drop_path)


ARCHS: Dict[str, MViTv2Arch] = {
    'tiny': _image(96, 10, 1, (1, 3, 8), 0.1),
    'small': _image(96, 16, 1, (1, 3, 14), 0.1),
    'base': _image(96, 24, 1, (2, 5, 21), 0.3),
    'large': _image(144, 48, 2, (2, 8, 44), 0.5, dim_mul_in_att=False),
    # No drop-path rate was published for H.
    'huge': _image(192, 80, 3, (4, 12, 72), 0.0, with_cls_token=True),
    'base-in21k': _image(96, 24, 1, (2, 5, 21), 0.3, with_cls_token=True),
    'large-in21k': _image(144, 48, 2, (2, 8, 44), 0.5, with_cls_token=True),
    'small-16x4': _video(96, 16, 1, (1, 3, 14), 0.2, (16, 224, 224)),
    'base-32x3': _video(96, 24, 1, (2, 5, 21), 0.3, (32, 224, 224)),
    'large-40x3': _video(144, 48, 2, (2, 8, 44), 0.75, (40, 312, 312)),
}


def resolve_arch(arch: Union[str, dict, MViTv2Arch]) -> MViTv2Arch:
    """An arch from its name, a dict of ``MViTv2Arch`` fields, or an ``MViTv2Arch``."""
    if isinstance(arch, MViTv2Arch):
        return arch
    if isinstance(arch, str):
        if arch.lower() not in ARCHS:
            raise ValueError(f'unknown MViTv2 arch {arch!r}; choose one of {sorted(ARCHS)} '
                             'or give a dict of MViTv2Arch fields')
        return ARCHS[arch.lower()]
    if isinstance(arch, dict):
        fields = {f.name for f in dataclasses.fields(MViTv2Arch)}
        unknown = set(arch) - fields
        if unknown:
            raise ValueError(f'MViTv2 arch dict has unknown fields {sorted(unknown)}; '
                             f'known fields: {sorted(fields)}')
        missing = {'embed_dim', 'depth', 'num_heads', 'stage_starts'} - set(arch)
        if missing:
            raise ValueError(f'MViTv2 arch dict lacks required fields {sorted(missing)}')
        return MViTv2Arch(**arch)
    raise TypeError(f'arch must be a name, a dict or an MViTv2Arch, got {type(arch).__name__}')


@dataclass(frozen=True)
class BlockSpec:
    """Everything one block needs to know about its place in the network."""
    dim_in: int
    dim_out: int
    num_heads: int
    q_stride: Size
    kv_stride: Size
    rel_pos_lengths: Size  # one table length per axis, (t,) h, w


def block_specs(arch: MViTv2Arch, input_size: Size) -> List[BlockSpec]:
    """Widths, heads, strides and relative-position table lengths of every block.

    Table lengths follow the official code: the grid is tracked with floor division from the
    input size the model is built for, and each table spans 2 * max(q side, kv side) - 1.
    """
    grid = tuple(s // p for s, p in zip(input_size, arch.patch_stride))
    ones = (1,) * len(grid)
    kv_stride = arch.first_kv_stride
    dim, heads = arch.embed_dim, arch.num_heads
    specs = []
    for i in range(arch.depth):
        at_start = i in arch.stage_starts
        q_stride = arch.q_stride if at_start else ones
        if at_start:
            kv_stride = tuple(max(k // q, 1) for k, q in zip(kv_stride, q_stride))
            heads *= 2
        if arch.dim_mul_in_att:
            dim_out = dim * 2 if at_start else dim
        else:  # the width grows in the MLP of the block before each stage start
            dim_out = dim * 2 if i + 1 in arch.stage_starts else dim
        lengths = []
        for axis, side in enumerate(grid):
            lengths.append(rel_pos_table_length(side // q_stride[axis],
                                                side // kv_stride[axis]))
        specs.append(BlockSpec(dim, dim_out, heads, q_stride, kv_stride, tuple(lengths)))
        grid = tuple(s // q for s, q in zip(grid, q_stride))
        dim = dim_out
    return specs
