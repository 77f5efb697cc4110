"""Static block-sparse attention: local blocks + global tokens + strided blocks.

The BigBird (https://arxiv.org/abs/2007.14062, without the random blocks), Longformer
(https://arxiv.org/abs/2004.05150) and Sparse Transformer (https://arxiv.org/abs/1904.10509,
strided pattern at block granularity) family; see
:func:`mmeff.ops.sparse_attention.block_sparse_attention` for the exact pattern.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._utils import check_positive
from ..ops.sparse_attention import block_sparse_attention
from .attention import Attention
from .base import register_mixer


@register_mixer("block_sparse")
class BlockSparseAttention(Attention):
    """Attention over a static block pattern; projections as :class:`Attention` (same parameters).

    Args:
        block_size: tokens per block.
        num_local_blocks: neighbouring blocks seen on each side (causal: before) of a query block.
        num_global_tokens: the first tokens, seen by all (and, bidirectional, seeing all).
        stride: if > 0, blocks at a multiple of ``stride`` blocks away are seen too.
        num_heads, num_kv_heads, qkv_bias, qk_norm, rope, rope_base: as in :class:`Attention`.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 8,
                 num_kv_heads: Optional[int] = None, qkv_bias: bool = True, qk_norm: bool = False,
                 rope: Optional[str] = None, rope_base: float = 10000.0, block_size: int = 64,
                 num_local_blocks: int = 1, num_global_tokens: int = 0, stride: int = 0,
                 device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         qkv_bias=qkv_bias, qk_norm=qk_norm, rope=rope, rope_base=rope_base,
                         device=device, dtype=dtype)
        check_positive("block_size", block_size)
        for name, val in (("num_local_blocks", num_local_blocks), ("num_global_tokens", num_global_tokens),
                          ("stride", stride)):
            check_positive(name, val, allow_zero=True)
        self.block_size, self.num_local_blocks = block_size, num_local_blocks
        self.num_global_tokens, self.stride = num_global_tokens, stride

    def _attend(self, q, k, v, k_start: int, grid) -> torch.Tensor:
        return block_sparse_attention(q, k, v, self.block_size, self.num_local_blocks,
                                      self.num_global_tokens, self.stride, self.causal)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, block_size={self.block_size}, local={self.num_local_blocks}, "
                f"global={self.num_global_tokens}, stride={self.stride}")
