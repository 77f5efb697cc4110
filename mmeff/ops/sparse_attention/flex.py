"""The CUDA path: FlexAttention (``torch.nn.attention.flex_attention``) compiled to a Triton kernel.

The pattern's rule becomes the ``mask_mod`` (dynamic block selections are looked up in a
``[Bi, Hi, nQB, nKB]`` membership table); ``create_block_mask`` turns it into a ``BlockMask`` so the
kernel skips empty 128x128 tiles.  Compiled FlexAttention specialises on the sequence lengths, so
short query chunks (decoding, ``T < MIN_QUERIES``) take the gather path instead of recompiling
for every new cache length.  Registered as the ``triton`` backend of the sparse ops.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from .gather import gather_attention
from .patterns import Pattern, table_from_blocks

MIN_QUERIES = 128
_COMPILED: Dict[str, Callable] = {}


def _flex() -> Callable:
    if "flex" not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["flex"]


def flex_attention_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                        scale: Optional[float] = None) -> torch.Tensor:
    """FlexAttention of ``q[B, T, H, D]`` on ``k, v[B, S, Hk, *]`` under ``pattern``."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T, H, _ = q.shape
    S, Hk = k.shape[1], k.shape[2]
    if T < MIN_QUERIES:
        return gather_attention(q, k, v, pattern, scale)
    p = pattern
    bq, bk = p.block_q, p.block_k
    qa0, ka0 = p.q_start // bq, p.k_start // bk
    table, bi, group = None, 1, H
    if p.selective:
        table = table_from_blocks(p.kv_blocks, ka0, (p.k_start + S - 1) // bk - ka0 + 1)
        bi, group = table.shape[0], H // table.shape[1]

    def mask_mod(b, h, qi, kj):
        qp, kp = qi + p.q_start, kj + p.k_start
        m = p.rule(qp, kp) if p.rule is not None else qi >= 0
        if table is not None:
            m = m & table[b if bi > 1 else 0, h // group, qp // bq - qa0, kp // bk - ka0]
        return m

    mask = create_block_mask(mask_mod, B if bi > 1 else None, H if group < H else None, T, S,
                             device=q.device, _compile=True)
    o = _flex()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask,
                scale=scale, enable_gqa=H != Hk)
    return o.transpose(1, 2)
