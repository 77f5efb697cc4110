"""Sliding-window softmax attention (Longformer https://arxiv.org/abs/2004.05150, Mistral, Samba
https://arxiv.org/abs/2406.07522): each token sees the ``window`` most recent tokens (causal) or
the ``2*window - 1`` around it (bidirectional).  ``step`` keeps only the last ``window - 1`` keys,
so streaming memory is bounded.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._utils import check_positive
from ..ops.sparse_attention import sliding_window_attention
from .attention import Attention
from .base import register_mixer


@register_mixer("sliding_window")
class SlidingWindowAttention(Attention):
    """Attention restricted to a sliding window; projections as :class:`Attention` (same parameters).

    Args:
        window: keys per query including itself (causal); half-width for ``causal=False``.
        block_size: tile of the gather path (a speed knob; the result does not depend on it).
        num_heads, num_kv_heads, qkv_bias, qk_norm, rope, rope_base: as in :class:`Attention`.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 8,
                 num_kv_heads: Optional[int] = None, qkv_bias: bool = True, qk_norm: bool = False,
                 rope: Optional[str] = None, rope_base: float = 10000.0, window: int = 512,
                 block_size: int = 64, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         qkv_bias=qkv_bias, qk_norm=qk_norm, rope=rope, rope_base=rope_base,
                         device=device, dtype=dtype)
        check_positive("window", window)
        check_positive("block_size", block_size)
        self.window, self.block_size = window, block_size

    def _attend(self, q, k, v, k_start: int, grid) -> torch.Tensor:
        return sliding_window_attention(q, k, v, self.window, self.causal, block_size=self.block_size)

    def _keep_from(self, next_pos: int) -> int:
        return next_pos - self.window + 1

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window={self.window}"
