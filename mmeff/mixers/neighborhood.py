"""Neighborhood attention on 2D / 3D grids (NAT https://arxiv.org/abs/2204.07143, DiNAT
https://arxiv.org/abs/2209.15001; NATTEN semantics).

Each token attends to the ``kernel_size`` (per axis) nearest tokens of the grid, spaced by
``dilation``; windows are shifted inside the grid at the borders, so every query sees exactly
``prod(kernel_size)`` keys.  ``causal`` may be set per axis (e.g. ``(True, False, False)`` for the
time axis of a video).  When every axis is causal the mixer streams: ``step`` keeps the keys of
the last ``(kernel_size[0] - 1) * dilation[0] + 1`` frames only.

The grid is given at construction, by :meth:`set_grid` or per call (``forward(x, grid=...)``);
tokens are in raster order and there are exactly ``prod(grid)`` of them (no prefix tokens).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from ..ops.sparse_attention import neighborhood_attention
from ..ops.sparse_attention.patterns import per_axis
from .attention import Attention
from .base import register_mixer


@register_mixer("neighborhood")
class NeighborhoodAttention(Attention):
    """Neighborhood attention; projections as :class:`Attention` (NAT without its relative bias).

    Args:
        causal: a bool for every axis, or one per axis; the mixer is streaming-causal only if all are.
        grid: ``(H, W)`` or ``(T, H, W)``.
        kernel_size: neighborhood size, an int or one per axis.
        dilation: spacing of the neighborhood, an int or one per axis.
        block_size: tile of the gather path (speed only).
        num_heads, num_kv_heads, qkv_bias, qk_norm, rope, rope_base: as in :class:`Attention`
            (``rope='2d'/'3d'`` uses the same grid).
    """

    def __init__(self, dim: int, *, causal: Union[bool, Sequence[bool]] = False, num_heads: int = 8,
                 num_kv_heads: Optional[int] = None, qkv_bias: bool = True, qk_norm: bool = False,
                 rope: Optional[str] = None, rope_base: float = 10000.0,
                 grid: Optional[Sequence[int]] = None, kernel_size: Union[int, Sequence[int]] = 7,
                 dilation: Union[int, Sequence[int]] = 1, block_size: int = 64,
                 device=None, dtype=None) -> None:
        axes = None if isinstance(causal, bool) else tuple(causal)
        super().__init__(dim, causal=causal if axes is None else all(axes), num_heads=num_heads,
                         num_kv_heads=num_kv_heads, qkv_bias=qkv_bias, qk_norm=qk_norm, rope=rope,
                         rope_base=rope_base, grid=grid, device=device, dtype=dtype)
        self.causal_axes, self.kernel_size, self.dilation = axes, kernel_size, dilation
        self.block_size = block_size
        if grid is not None:
            self._axes(len(self.grid))

    def _axes(self, ndim: int) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[bool, ...]]:
        """(kernel, dilation, causal) per axis for a grid of ``ndim`` axes."""
        causal = self.causal_axes or (self.causal,) * ndim
        if len(causal) != ndim:
            raise ValueError(f"causal has {len(causal)} axes but the grid has {ndim}")
        return per_axis("kernel_size", self.kernel_size, ndim), per_axis("dilation", self.dilation, ndim), causal

    def forward(self, x: torch.Tensor, *, grid: Optional[Sequence[int]] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        grid = self._resolve_grid(grid)
        if grid is None:
            raise ValueError("NeighborhoodAttention needs a grid (grid= at construction, set_grid() "
                             "or forward(grid=))")
        self._check_input(x)
        self._check_grid_tokens(x, grid)
        return super().forward(x, grid=grid, positions=positions)

    def _attend(self, q, k, v, k_start: int, grid) -> torch.Tensor:
        if grid is None:
            raise ValueError("NeighborhoodAttention needs a grid to stream (set_grid())")
        kernel, dilation, causal = self._axes(len(grid))
        return neighborhood_attention(q, k, v, grid, kernel, dilation, causal, k_start=k_start,
                                      block_size=self.block_size)

    def _keep_from(self, next_pos: int) -> int:
        kernel, dilation, _ = self._axes(len(self.grid))
        frame = math.prod(self.grid[1:])
        return (next_pos // frame - (kernel[0] - 1) * dilation[0]) * frame

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, grid={self.grid}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, causal_axes={self.causal_axes}")
