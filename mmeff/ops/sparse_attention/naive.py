"""The reference: dense ``F.scaled_dot_product_attention`` in fp32 with the explicit boolean mask.

O(T*S) time and memory; this is the spec the fast paths are tested against.  Queries that see no
key (e.g. NSA's compressed branch before the first complete block) output zeros.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import repeat

from .patterns import Pattern, table_from_blocks


def pattern_mask(pattern: Pattern, T: int, S: int, device) -> torch.Tensor:
    """The explicit boolean mask ``[Bi, Hi, T, S]`` (or ``[T, S]``) of ``pattern``."""
    p = pattern
    qpos = torch.arange(p.q_start, p.q_start + T, device=device)[:, None]
    kpos = torch.arange(p.k_start, p.k_start + S, device=device)[None, :]
    mask = p.mask(qpos, kpos)
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=device)
    if p.selective:
        qa0, ka0 = p.q_start // p.block_q, p.k_start // p.block_k
        nkb = (p.k_start + S - 1) // p.block_k - ka0 + 1
        table = table_from_blocks(p.kv_blocks, ka0, nkb)  # [Bi, Hi, nQB, nKB]
        qrow = torch.div(qpos[:, 0], p.block_q, rounding_mode="floor") - qa0
        kcol = torch.div(kpos[0], p.block_k, rounding_mode="floor") - ka0
        mask = mask & table[:, :, qrow][..., kcol]
    return mask


def masked_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                scale: Optional[float], bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fp32 SDPA of ``q[B, T, H, D]`` on ``k, v[B, S, Hk, *]`` under ``mask`` (+ additive ``bias``).

    ``mask``/``bias`` broadcast to ``[B, H, T, S]`` (a head dim of Hk < H is expanded per group).
    Rows with no allowed key return zeros (with zero gradients, no NaN).
    """
    H, Hk = q.shape[2], k.shape[2]
    k, v = (repeat(t, "b s h d -> b s (h g) d", g=H // Hk) for t in (k, v))
    if mask.dim() == 4 and 1 < mask.shape[1] < H:
        mask = mask.repeat_interleave(H // mask.shape[1], dim=1)
    any_key = mask.any(-1, keepdim=True)
    mask = mask | ~any_key  # a fully masked row attends anywhere, then is zeroed
    attn = torch.zeros(mask.shape, device=q.device).masked_fill(~mask, float("-inf"))
    if bias is not None:
        attn = attn + bias.float()
    o = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v)),
                                       attn_mask=attn, scale=scale)
    o = o * any_key  # [B, H, T, Dv]
    return o.transpose(1, 2).to(q.dtype)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                    scale: Optional[float] = None) -> torch.Tensor:
    """Dense attention of ``q[B, T, H, D]`` on ``k, v[B, S, Hk, *]`` under ``pattern``'s mask."""
    return masked_sdpa(q, k, v, pattern_mask(pattern, q.shape[1], k.shape[1], q.device), scale)


__all__ = ["naive_attention", "masked_sdpa", "pattern_mask"]
