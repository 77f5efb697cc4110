"""Swin / Video-Swin window attention with shifted windows and relative position bias.

Swin (https://arxiv.org/abs/2103.14030), Video Swin (https://arxiv.org/abs/2106.13230): attention
inside non-overlapping windows of the grid; ``shift_size`` shifts them (cyclic shift + mask, as
in Swin) so alternate blocks connect neighbouring windows.  The window size must divide the grid:
a grid that does not is a clear ValueError (no silent padding).  Bidirectional only.

The grid is given at construction, by :meth:`set_grid` or per call (``forward(x, grid=...)``);
tokens are in raster order and there are exactly ``prod(grid)`` of them.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..ops.sparse_attention import window_attention
from ..ops.sparse_attention.patterns import per_axis
from .attention import Attention
from .base import register_mixer


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """``[Wn, Wn]`` index into a ``prod(2w - 1)``-row bias table of each in-window position pair."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # [nd, Wn, Wn]
    idx = torch.zeros_like(rel[0])
    for r, w in zip(rel, window):
        idx = idx * (2 * w - 1) + r + w - 1
    return idx


@register_mixer("window")
class WindowAttention(Attention):
    """(Shifted) window attention; parameters as timm's Swin ``WindowAttention`` at the same width.

    Args:
        causal: must be False (windows are bidirectional).
        grid: ``(H, W)`` or ``(T, H, W)``.
        window_size: window per axis (an int: the same on every axis of a 2D window, or of a 3D
            one when ``grid`` is 3D).
        shift_size: shift per axis (Swin uses ``window // 2`` in every other block), 0 <= shift < window.
        rel_pos_bias: learnable relative position bias table (``prod(2w - 1) x H``), as in Swin.
        num_heads, num_kv_heads, qkv_bias, qk_norm, rope, rope_base: as in :class:`Attention`.
    """

    def __init__(self, dim: int, *, causal: bool = False, num_heads: int = 8,
                 num_kv_heads: Optional[int] = None, qkv_bias: bool = True, qk_norm: bool = False,
                 rope: Optional[str] = None, rope_base: float = 10000.0,
                 grid: Optional[Sequence[int]] = None, window_size: Union[int, Sequence[int]] = 7,
                 shift_size: Union[int, Sequence[int]] = 0, rel_pos_bias: bool = True,
                 device=None, dtype=None) -> None:
        if causal:
            raise ValueError("window attention is bidirectional inside each window (Swin); "
                             "causal must be False, got True")
        super().__init__(dim, causal=False, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         qkv_bias=qkv_bias, qk_norm=qk_norm, rope=rope, rope_base=rope_base,
                         grid=grid, device=device, dtype=dtype)
        ndim = len(window_size) if not isinstance(window_size, int) else len(self.grid or (0, 0))
        self.window_size = per_axis("window_size", window_size, ndim)
        self.shift_size = per_axis("shift_size", shift_size, ndim, minimum=0)
        if any(s >= w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"shift_size {self.shift_size} must be smaller than window_size "
                             f"{self.window_size} on every axis")
        self.relative_position_bias_table = None
        if rel_pos_bias:
            rows = math.prod(2 * w - 1 for w in self.window_size)
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros(rows, num_heads, device=device, dtype=dtype))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index",
                                 relative_position_index(self.window_size).to(device), persistent=False)

    def _bias(self) -> Optional[torch.Tensor]:
        if self.relative_position_bias_table is None:
            return None
        bias = self.relative_position_bias_table[self.relative_position_index]  # [Wn, Wn, H]
        return bias.permute(2, 0, 1)  # [H, Wn, Wn]

    def forward(self, x: torch.Tensor, *, grid: Optional[Sequence[int]] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        grid = self._resolve_grid(grid)
        if grid is None or len(grid) != len(self.window_size):
            raise ValueError(f"WindowAttention with window_size {self.window_size} needs a "
                             f"{len(self.window_size)}-D grid (grid=, set_grid() or forward(grid=)), "
                             f"got {grid!r}")
        self._check_input(x)
        self._check_grid_tokens(x, grid)
        return super().forward(x, grid=grid, positions=positions)

    def _attend(self, q, k, v, k_start: int, grid) -> torch.Tensor:
        return window_attention(q, k, v, grid, self.window_size, self.shift_size, self._bias())

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, grid={self.grid}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}")
