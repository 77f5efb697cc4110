"""MoBA: Mixture of Block Attention (Lu et al. 2025, https://arxiv.org/abs/2502.13189).

The keys are cut into blocks; each query token scores every block by ``q . mean(K_block)``
(a parameter-free gate) and attends only to its ``top_k`` blocks; its own block is always one of
them (causal inside it), and future blocks are never chosen.  Parameters are those of
:class:`Attention` (MoBA adds none).  ``step`` keeps the full KV cache (any past block may be chosen).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._utils import check_positive
from ..ops.sparse_attention import moba_attention
from ..ops.sparse_attention.patterns import cdiv
from .attention import Attention
from .base import register_mixer


@register_mixer("moba")
class MoBA(Attention):
    """Mixture of Block Attention.

    Args:
        block_size: keys per block (the paper uses 512 at 8K context, 4096 at 1M).
        top_k: blocks per query, own block included (the paper uses 3); with fewer blocks than
            ``top_k`` (short sequences) every block is taken.
        num_heads, num_kv_heads, qkv_bias, qk_norm, rope, rope_base: as in :class:`Attention`.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 8,
                 num_kv_heads: Optional[int] = None, qkv_bias: bool = True, qk_norm: bool = False,
                 rope: Optional[str] = None, rope_base: float = 10000.0, block_size: int = 512,
                 top_k: int = 3, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         qkv_bias=qkv_bias, qk_norm=qk_norm, rope=rope, rope_base=rope_base,
                         device=device, dtype=dtype)
        check_positive("block_size", block_size)
        check_positive("top_k", top_k)
        self.block_size, self.top_k = block_size, top_k

    def _attend(self, q, k, v, k_start: int, grid) -> torch.Tensor:
        top_k = min(self.top_k, cdiv(k.shape[1], self.block_size))
        return moba_attention(q, k, v, self.block_size, top_k, self.causal)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}, top_k={self.top_k}"
