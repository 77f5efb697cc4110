"""The registered 2D and 3D scan orderings.

Each function maps a grid (and its keyword parameters) to ``LongTensor[K, N]`` on the CPU: row k
lists the row-major token indices in the order path k visits them.  :mod:`mmeff.scans.base` caches
the result per grid and device.

2D, grid ``(H, W)``:

- ``raster``, ``reversed``, ``column``: row-major, its reverse, column-major (K=1).
- ``cross``: VMamba's SS2D cross scan, [row, column, row reversed, column reversed] (K=4).
  VMamba: https://arxiv.org/abs/2401.10166
- ``snake`` / ``snake4``: PlainMamba's continuous (boustrophedon) scan, which turns at row ends
  instead of jumping; ``snake4`` = [row snake, column snake, both reversed] (K=4).
  PlainMamba: https://arxiv.org/abs/2403.17695
- ``zigzag``: ZigMa's 8 zigzag paths (row and column snakes from each of the 4 corners); ``layer=i``
  picks path ``i % 8`` (K=1), ``layer=None`` keeps all 8.  ZigMa: https://arxiv.org/abs/2403.13802
- ``hilbert``: generalized Hilbert curve for any H x W (:mod:`mmeff.scans.curves`), K=1.
- ``local``: LocalMamba's windowed scan, raster inside ``window`` tiles visited in raster order
  (border tiles may be smaller); ``flip=True`` adds the reversed path.
  LocalMamba: https://arxiv.org/abs/2403.09338
- ``atrous``: EfficientVMamba's skip sampling: the ``stride**2`` dilated sub-lattices
  ``{(i, j): i % s == a, j % s == b}`` concatenated in (a, b) raster order in one path (K=1; a
  mixer running along it sees each sub-lattice as a contiguous stretch).  With ``cross=True``
  sub-lattice m is traversed in cross direction ``m % 4`` (row, column, both reversed), as ES2D
  assigns one direction per sub-lattice.  EfficientVMamba: https://arxiv.org/abs/2403.09977

3D, grid ``(T, H, W)``:

- ``spatial_first``: frame by frame, raster in each frame (VideoMamba's order), K=1.
  VideoMamba: https://arxiv.org/abs/2403.06977
- ``temporal_first``: pixel by pixel (raster), through time at each pixel, K=1.
- ``cross3d``: [spatial_first, temporal_first, both reversed] (K=4).
- ``snake3d``: a row snake in each frame, every other frame traversed backwards, so each step
  (also between frames) goes to a neighbouring cell, K=1.
- ``hilbert3d``: generalized 3D Hilbert curve for any T x H x W, K=1.
- ``tube_local``: raster inside ``(wt, wh, ww)`` tubes visited in raster order; ``flip`` as in
  ``local``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from einops import rearrange

from .._utils import check_positive
from .base import Grid, register_scan
from .curves import hilbert_order


# ---------------------------------------------------------------- helpers

def _index(grid: Grid) -> torch.Tensor:
    """Row-major token indices laid out as the grid."""
    return torch.arange(math.prod(grid)).view(grid)  # [H, W] or [T, H, W]


def _snake(idx: torch.Tensor) -> torch.Tensor:
    """Boustrophedon over the rows of a 2D index tensor: odd rows run right to left."""
    out = idx.clone()
    out[1::2] = out[1::2].flip(-1)
    return out.flatten()


def _with_reversed(*paths: torch.Tensor) -> torch.Tensor:
    """``[paths..., each path reversed]`` as ``[2 * len(paths), N]``."""
    return torch.stack(list(paths) + [p.flip(0) for p in paths])


def _cross(idx: torch.Tensor) -> torch.Tensor:
    """VMamba's four directions of a 2D index tensor: row, column, row reversed, column reversed."""
    return _with_reversed(idx.flatten(), idx.t().flatten())


def _window(window: Union[int, Sequence[int]], ndim: int) -> Tuple[int, ...]:
    """A window size given as an int or ``ndim`` ints, as a tuple of ``ndim`` positive ints."""
    size = (window,) * ndim if isinstance(window, int) else tuple(window)
    if len(size) != ndim or not all(isinstance(n, int) and n > 0 for n in size):
        raise ValueError(f"window must be a positive int or {ndim} positive ints, got {window!r}")
    return size


def _windowed(grid: Grid, window: Tuple[int, ...], flip: bool) -> torch.Tensor:
    """Raster order inside windows of ``window`` cells, windows in raster order (any grid size)."""
    coords = [c.flatten() for c in torch.meshgrid(*[torch.arange(n) for n in grid], indexing="ij")]
    keys = [c // w for c, w in zip(coords, window)] + coords  # window index first, then cell
    order = torch.arange(math.prod(grid))
    for key in reversed(keys):  # least significant key first; stable sorts keep earlier keys' order
        order = order[torch.sort(key[order], stable=True).indices]
    return _with_reversed(order) if flip else order[None]


# ---------------------------------------------------------------- 2D

@register_scan("raster", 2)
def raster(grid: Grid) -> torch.Tensor:
    return _index(grid).flatten()[None]


@register_scan("reversed", 2)
def reversed_raster(grid: Grid) -> torch.Tensor:
    return _index(grid).flatten().flip(0)[None]


@register_scan("column", 2)
def column(grid: Grid) -> torch.Tensor:
    return _index(grid).t().flatten()[None]


@register_scan("cross", 2)
def cross2d(grid: Grid) -> torch.Tensor:
    return _cross(_index(grid))


@register_scan("snake", 2)
def snake(grid: Grid) -> torch.Tensor:
    return _snake(_index(grid))[None]


@register_scan("snake4", 2)
def snake4(grid: Grid) -> torch.Tensor:
    idx = _index(grid)
    return _with_reversed(_snake(idx), _snake(idx.t()))


# corners as the dims to flip: top-left, bottom-left, bottom-right, top-right
_CORNERS = ((), (0,), (0, 1), (1,))


@register_scan("zigzag", 2)
def zigzag(grid: Grid, layer: Optional[int] = None) -> torch.Tensor:
    """Path ``2 * c + o`` starts at corner c (top-left, bottom-left, bottom-right, top-right) and
    snakes along rows (o = 0) or columns (o = 1)."""
    idx = _index(grid)
    paths = []
    for dims in _CORNERS:
        start = idx.flip(dims) if dims else idx
        paths += [_snake(start), _snake(start.t())]
    if layer is None:
        return torch.stack(paths)
    check_positive("layer", layer, allow_zero=True)
    return paths[layer % len(paths)][None]


@register_scan("hilbert", 2)
def hilbert(grid: Grid) -> torch.Tensor:
    return torch.tensor(hilbert_order(grid))[None]


@register_scan("local", 2)
def local(grid: Grid, window: Union[int, Tuple[int, int]] = 2, flip: bool = False) -> torch.Tensor:
    return _windowed(grid, _window(window, 2), flip)


@register_scan("atrous", 2)
def atrous(grid: Grid, stride: int = 2, cross: bool = False) -> torch.Tensor:
    check_positive("stride", stride)
    idx = _index(grid)
    parts = []
    for m in range(stride * stride):
        sub = idx[m // stride::stride, m % stride::stride]  # sub-lattice (a, b) = divmod(m, s)
        parts.append(_cross(sub)[m % 4] if cross else sub.flatten())
    return torch.cat(parts)[None]


# ---------------------------------------------------------------- 3D

@register_scan("spatial_first", 3)
def spatial_first(grid: Grid) -> torch.Tensor:
    return _index(grid).flatten()[None]


@register_scan("temporal_first", 3)
def temporal_first(grid: Grid) -> torch.Tensor:
    return rearrange(_index(grid), "t h w -> (h w t)")[None]


@register_scan("cross3d", 3)
def cross3d(grid: Grid) -> torch.Tensor:
    idx = _index(grid)
    return _with_reversed(idx.flatten(), rearrange(idx, "t h w -> (h w t)"))


@register_scan("snake3d", 3)
def snake3d(grid: Grid) -> torch.Tensor:
    frames = torch.stack([_snake(frame) for frame in _index(grid)])  # [T, H*W]
    frames[1::2] = frames[1::2].flip(-1)
    return frames.flatten()[None]


@register_scan("hilbert3d", 3)
def hilbert3d(grid: Grid) -> torch.Tensor:
    return torch.tensor(hilbert_order(grid))[None]


@register_scan("tube_local", 3)
def tube_local(grid: Grid, window: Union[int, Tuple[int, int, int]] = (2, 4, 4),
               flip: bool = False) -> torch.Tensor:
    return _windowed(grid, _window(window, 3), flip)
