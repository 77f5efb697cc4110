"""Full softmax attention through ``F.scaled_dot_product_attention`` (FlashAttention on GPU).

Multi-head, grouped-query (``num_kv_heads < num_heads``) and multi-query (``num_kv_heads=1``)
attention; a growing KV cache in ``step`` for decoding and streaming.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_divisible, check_positive
from .base import Mixer, register_mixer


@register_mixer("attention")
class Attention(Mixer):
    """Softmax attention (MHA / GQA / MQA).

    Args:
        dim: model width.
        causal: causal mask (and streaming with a KV cache) if True.
        num_heads: query heads; ``dim`` must divide by it.
        num_kv_heads: key/value heads (GQA); defaults to ``num_heads``.
        qkv_bias: bias on the q/k/v projection.
        attn_drop: dropout on attention weights while training.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 8,
                 num_kv_heads: Optional[int] = None, qkv_bias: bool = True, attn_drop: float = 0.0,
                 device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_positive("num_kv_heads", num_kv_heads)
        check_divisible("num_heads", num_heads, "num_kv_heads", num_kv_heads)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(dim, dim, **fk)

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([h * d, hk * d, hk * d], dim=-1)
        q = rearrange(q, "b l (h d) -> b h l d", h=h)  # [B, H, L, d]
        k = rearrange(k, "b l (h d) -> b h l d", h=hk)  # [B, Hk, L, d]
        v = rearrange(v, "b l (h d) -> b h l d", h=hk)
        return q, k, v

    def _attend(self, q, k, v, is_causal: bool) -> torch.Tensor:
        gqa = self.num_kv_heads != self.num_heads
        if gqa:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        drop = self.attn_drop if self.training else 0.0
        if is_causal and q.shape[2] != k.shape[2]:
            # chunk of new queries against cache + chunk: query i sits at position past + i
            past = k.shape[2] - q.shape[2]
            i = torch.arange(q.shape[2], device=q.device)[:, None]
            j = torch.arange(k.shape[2], device=q.device)[None, :]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=j <= i + past, dropout_p=drop)
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, dropout_p=drop)
        return self.proj(rearrange(o, "b h l d -> b l (h d)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        q, k, v = self._qkv(x)
        return self._attend(q, k, v, self.causal)

    def init_state(self, batch: int, device=None, dtype=None) -> Dict[str, torch.Tensor]:
        self._require_causal("init_state")
        dtype = dtype or self.qkv.weight.dtype
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype),
                "v": torch.zeros(shape, device=device, dtype=dtype)}

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor]):
        self._require_causal("step")
        self._check_input(x)
        q, k, v = self._qkv(x)
        k = torch.cat([state["k"].to(k.dtype), k], dim=2)
        v = torch.cat([state["v"].to(v.dtype), v], dim=2)
        return self._attend(q, k, v, True), {"k": k, "v": v}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}")
