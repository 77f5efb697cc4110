"""Swin / Video-Swin (shifted) window attention: the dense reference and the partition fast path.

Swin (https://arxiv.org/abs/2103.14030) and Video Swin (https://arxiv.org/abs/2106.13230) attend
inside non-overlapping windows; every other block shifts the windows by ``shift`` (Swin rolls the
grid by ``-shift`` and masks the pairs that wrapped around).  An optional relative position bias
``bias[H, Wn, Wn]`` (Wn = tokens per window) is added inside each window.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from .naive import masked_sdpa
from .patterns import unravel, window_groups


def _flat_index(pos: Sequence[torch.Tensor], window: Sequence[int]) -> torch.Tensor:
    """Row-major index inside a window from per-axis positions."""
    idx = torch.zeros_like(pos[0])
    for p, w in zip(pos, window):
        idx = idx * w + p
    return idx


def window_attention_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int],
                           window: Sequence[int], shift: Sequence[int], bias: Optional[torch.Tensor],
                           scale: Optional[float]) -> torch.Tensor:
    """Dense fp32 SDPA with the explicit shifted-window mask (and the bias spread to ``[H, N, N]``)."""
    coords = unravel(torch.arange(q.shape[1], device=q.device), grid)
    gid, pos = window_groups(coords, window, shift)
    mask = torch.stack([g[:, None] == g[None, :] for g in gid]).all(0)  # [N, N]
    dense_bias = None
    if bias is not None:
        w = _flat_index(pos, window)
        dense_bias = bias[:, w[:, None], w[None, :]]  # [H, N, N]
    return masked_sdpa(q, k, v, mask, scale, dense_bias)


def window_attention_partition(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int],
                               window: Sequence[int], shift: Sequence[int], bias: Optional[torch.Tensor],
                               scale: Optional[float]) -> torch.Tensor:
    """Roll, cut into windows, batched SDPA per window (region mask + bias), stitch back."""
    B, N, H, _ = q.shape
    nd = len(grid)
    axes = list(range(1, nd + 1))
    dims = {f"w{a}": window[a] for a in range(nd)}
    spatial = " ".join(f"(n{a} w{a})" for a in range(nd))
    to_win = f"b {spatial} ... -> (b {' '.join(f'n{a}' for a in range(nd))}) ({' '.join(f'w{a}' for a in range(nd))}) ..."
    from_win = " -> ".join(to_win.split(" -> ")[::-1])
    sizes = {f"n{a}": grid[a] // window[a] for a in range(nd)}

    def part(t: torch.Tensor) -> torch.Tensor:  # [B, N, ...] -> [B*nW, Wn, ...]
        t = t.reshape(t.shape[0], *grid, *t.shape[2:])
        if any(shift):
            t = torch.roll(t, [-s for s in shift], axes)
        return rearrange(t, to_win, **dims)

    attn = None
    if any(shift) or bias is not None:
        attn = torch.zeros(1, 1, 1, 1, device=q.device)
        if any(shift):
            coords = unravel(torch.arange(N, device=q.device), grid)
            gid = part(torch.stack(window_groups(coords, window, shift)[0], -1)[None])  # [nW, Wn, nd]
            same = (gid[:, :, None] == gid[:, None, :]).all(-1)  # [nW, Wn, Wn]
            attn = attn + torch.zeros(same.shape, device=q.device).masked_fill(~same, float("-inf"))[:, None]
        if bias is not None:
            attn = attn + bias.float()[None]  # [nW|1, H, Wn, Wn]
        nw, wn = math.prod(sizes.values()), math.prod(window)
        attn = attn.expand(B, nw, H, wn, wn).reshape(B * nw, H, wn, wn).to(q.dtype)
    qw, kw, vw = (part(t).transpose(1, 2) for t in (q, k, v))  # [B*nW, H, Wn, D]
    o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=attn, scale=scale, enable_gqa=kw.shape[1] != H)
    o = rearrange(o.transpose(1, 2), from_win, b=B, **dims, **sizes)  # [B, *grid, H, Dv]
    if any(shift):
        o = torch.roll(o, list(shift), axes)
    return o.reshape(B, N, H, -1)
