"""Rotary position embedding (RoPE), 1D and axial N-D.

RoPE (RoFormer, https://arxiv.org/abs/2104.09864) rotates channel pairs of queries and keys by
angles proportional to the position, so ``q_i . k_j`` depends on ``i - j`` only.  The axial form for
images and video (as in EVA-02 / RoPE-Mixed, https://arxiv.org/abs/2403.13298, axial variant) splits
the channel pairs between the grid axes; each axis rotates its share by that axis' coordinate.
Pairs are ``(x[..., i], x[..., i + dim/2])`` (the "rotate half" layout of GPT-NeoX / LLaMA).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..ops.sparse_attention.patterns import check_grid, unravel


def grid_coords(grid: Sequence[int], length: int, start: int = 0,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """Coordinates ``[length, ndim]`` of raster positions ``start .. start+length-1`` of ``grid``.

    The first axis is unbounded (position ``n`` of a ``(T, H, W)`` grid is at time ``n // (H*W)``
    even past ``T``), so a stream of frames keeps counting time.
    """
    pos = torch.arange(start, start + length, device=device)
    return torch.stack(unravel(pos, grid), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary embedding of ``dim`` channels over ``ndim`` coordinate axes (1 = plain RoPE).

    The ``dim // 2`` channel pairs are split between the axes as evenly as possible (the first axes
    take the remainder); each axis uses the frequencies ``base ** (-i / n_axis)``, i < n_axis, the
    1D RoPE ladder over its share.  No parameters and no buffers (angles are built in fp32 on the
    fly, so casting the module to bf16 cannot degrade them).

    Args:
        dim: rotated channels per head (even, >= 2 * ndim).
        ndim: number of coordinate axes (1: sequence, 2: image rows/cols, 3: video time/rows/cols).
        base: frequency base (10000 as in RoFormer).
    """

    def __init__(self, dim: int, ndim: int = 1, base: float = 10000.0) -> None:
        super().__init__()
        if ndim not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
        if not isinstance(dim, int) or dim % 2 or dim < 2 * ndim:
            raise ValueError(f"dim must be an even int >= {2 * ndim} for {ndim}-D RoPE, got {dim!r}")
        self.dim, self.ndim, self.base = dim, ndim, float(base)
        pairs = dim // 2
        self.sizes = [pairs // ndim + (a < pairs % ndim) for a in range(ndim)]

    def _freqs(self, device) -> tuple:
        inv, axis = [], []
        for a, n in enumerate(self.sizes):
            inv.append(self.base ** (-torch.arange(n, device=device, dtype=torch.float32) / n))
            axis.append(torch.full((n,), a, device=device, dtype=torch.long))
        return torch.cat(inv), torch.cat(axis)

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Rotate ``x[B, L, H, dim]`` by ``coords`` ``[L, ndim]`` or ``[B, L, ndim]`` (``[L]`` for 1D)."""
        if coords.dim() == 1:
            coords = coords[:, None]
        if coords.shape[-1] != self.ndim or coords.shape[-2] != x.shape[1]:
            raise ValueError(f"coords must be [L={x.shape[1]}, {self.ndim}] or [B, L, {self.ndim}], "
                             f"got {tuple(coords.shape)}")
        inv, axis = self._freqs(x.device)
        ang = coords.to(x.device, torch.float32)[..., axis] * inv  # [(B,) L, dim/2]
        cos, sin = ang.cos()[..., None, :], ang.sin()[..., None, :]  # [(B,) L, 1, dim/2]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    def rotate(self, x: torch.Tensor, start: int = 0, grid: Optional[Sequence[int]] = None,
               num_prefix: int = 0) -> torch.Tensor:
        """Rotate ``x[B, L, H, dim]`` holding stream positions ``start .. start+L-1``.

        The first ``num_prefix`` positions of the stream (class / register tokens) are not rotated;
        the rest count from 0, in raster order of ``grid`` for 2D/3D.
        """
        L = x.shape[1]
        n_pre = min(max(num_prefix - start, 0), L)
        first = start + n_pre - num_prefix
        if self.ndim == 1:
            coords = torch.arange(first, first + L - n_pre, device=x.device)[:, None]
        else:
            if grid is None or len(grid) != self.ndim:
                raise ValueError(f"{self.ndim}-D RoPE needs a grid of {self.ndim} sizes, got {grid!r}")
            coords = grid_coords(grid, L - n_pre, first, x.device)
        if n_pre == 0:
            return self(x, coords)
        return torch.cat([x[:, :n_pre], self(x[:, n_pre:], coords)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, ndim={self.ndim}, base={self.base:g}"


__all__ = ["RotaryEmbedding", "grid_coords", "check_grid"]
