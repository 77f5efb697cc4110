"""Full softmax attention through ``F.scaled_dot_product_attention`` (FlashAttention on GPU).

Multi-head, grouped-query (``num_kv_heads < num_heads``, https://arxiv.org/abs/2305.13245) and
multi-query (``num_kv_heads=1``, https://arxiv.org/abs/1911.02150) attention; optional QK-norm
(RMSNorm of each head's queries and keys, as in ViT-22B https://arxiv.org/abs/2302.05442); optional
RoPE (https://arxiv.org/abs/2104.09864), 1D over the sequence or axial 2D/3D over a grid; a KV cache
in ``step`` for decoding and streaming.

:class:`Attention` is also the base of the sparse / local attention mixers: they share its
projections, QK-norm, RoPE and cache, and override :meth:`Attention._attend` (which keys a query
sees) and :meth:`Attention._keep_from` (how much of the cache ``step`` must keep).

Grids: ``rope='2d'|'3d'`` (and the grid mixers) need the token grid ``(H, W)`` or ``(T, H, W)``;
give it at construction (``grid=``), change it with :meth:`Attention.set_grid` (an encoder that
sees a new input size calls it per stage), or pass ``grid=`` to ``forward`` for one call.  The
first ``num_prefix_tokens`` tokens (class / register tokens) come before the grid and get no rotation.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import RmsNorm
from torch import nn

from .._utils import check_divisible, check_positive
from ..layers.rope import RotaryEmbedding, check_grid
from .base import Mixer, register_mixer

ROPE_NDIM = {"1d": 1, "2d": 2, "3d": 3}


def make_rope(rope: Optional[str], dim: int, base: float) -> Optional[RotaryEmbedding]:
    """``RotaryEmbedding`` for ``rope`` in (None, '1d', '2d', '3d')."""
    if rope is None:
        return None
    if rope not in ROPE_NDIM:
        raise ValueError(f"rope must be None, '1d', '2d' or '3d', got {rope!r}")
    return RotaryEmbedding(dim, ROPE_NDIM[rope], base)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: Optional[float] = None,
         dropout: float = 0.0) -> torch.Tensor:
    """SDPA on ``q[B, L, H, d]``, ``k, v[B, S, Hk, *]``; causal queries are the last L of the S keys."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, d]
    gqa = q.shape[1] != k.shape[1]
    L, S = q.shape[2], k.shape[2]
    if causal and L != S:  # a chunk of new queries against cache + chunk
        i = torch.arange(L, device=q.device)[:, None] + (S - L)
        mask = torch.arange(S, device=q.device)[None, :] <= i
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale,
                                           enable_gqa=gqa)
    else:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout, scale=scale,
                                           enable_gqa=gqa)
    return o.transpose(1, 2)  # [B, L, H, dv]


@register_mixer("attention")
class Attention(Mixer):
    """Softmax attention (MHA / GQA / MQA) with optional QK-norm and RoPE.

    Parameters: ``qkv`` ``D x (H + 2 Hk) d`` (+ bias), ``proj`` ``D x D`` + bias (ViT / timm
    ``Attention`` at the same width when Hk = H), plus ``2 d`` norm weights with ``qk_norm``.

    Args:
        dim: model width.
        causal: causal mask (and streaming with a KV cache) if True.
        num_heads: query heads; ``dim`` must divide by it.
        num_kv_heads: key/value heads (GQA); defaults to ``num_heads``; 1 is MQA.
        qkv_bias: bias on the q/k/v projection.
        attn_drop: dropout on attention weights while training.
        qk_norm: RMSNorm over each head's queries and keys (before RoPE).
        rope: None, '1d' (sequence positions) or '2d' / '3d' (axial over ``grid``).
        rope_base: RoPE frequency base.
        grid: token grid ``(H, W)`` / ``(T, H, W)`` for 2D/3D RoPE (see the module docstring).
        num_prefix_tokens: tokens before the grid / sequence that RoPE leaves unrotated.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 8,
                 num_kv_heads: Optional[int] = None, qkv_bias: bool = True, attn_drop: float = 0.0,
                 qk_norm: bool = False, rope: Optional[str] = None, rope_base: float = 10000.0,
                 grid: Optional[Sequence[int]] = None, num_prefix_tokens: int = 0,
                 device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_positive("num_kv_heads", num_kv_heads)
        check_divisible("num_heads", num_heads, "num_kv_heads", num_kv_heads)
        check_positive("num_prefix_tokens", num_prefix_tokens, allow_zero=True)
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.num_prefix_tokens = num_prefix_tokens
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias, **fk)
        self.q_norm = RmsNorm(self.head_dim, **fk) if qk_norm else nn.Identity()
        self.k_norm = RmsNorm(self.head_dim, **fk) if qk_norm else nn.Identity()
        self.rope = make_rope(rope, self.head_dim, rope_base)
        self.proj = nn.Linear(dim, dim, **fk)
        self.grid: Optional[Tuple[int, ...]] = None
        if grid is not None:
            self.set_grid(grid)

    # -- grid ------------------------------------------------------------------------------
    def set_grid(self, grid: Sequence[int]) -> None:
        """Set the token grid ``(H, W)`` or ``(T, H, W)`` used by 2D/3D RoPE and grid mixers."""
        self.grid = check_grid(grid)

    def _resolve_grid(self, grid: Optional[Sequence[int]]) -> Optional[Tuple[int, ...]]:
        return check_grid(grid) if grid is not None else self.grid

    # -- pieces ----------------------------------------------------------------------------
    def _project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([h * d, hk * d, hk * d], dim=-1)
        q = self.q_norm(rearrange(q, "b l (h d) -> b l h d", h=h))  # [B, L, H, d]
        k = self.k_norm(rearrange(k, "b l (h d) -> b l h d", h=hk))  # [B, L, Hk, d]
        v = rearrange(v, "b l (h d) -> b l h d", h=hk)
        return q, k, v

    def _rotate(self, t: torch.Tensor, start: int, grid: Optional[Tuple[int, ...]],
                positions: Optional[torch.Tensor]) -> torch.Tensor:
        if self.rope is None:
            return t
        if positions is not None:
            return self.rope(t, positions)
        return self.rope.rotate(t, start, grid, self.num_prefix_tokens)

    def _check_grid_tokens(self, x: torch.Tensor, grid: Optional[Tuple[int, ...]]) -> None:
        if grid is not None and x.shape[1] != self.num_prefix_tokens + math.prod(grid):
            raise ValueError(f"grid {grid} (+ {self.num_prefix_tokens} prefix tokens) has "
                             f"{self.num_prefix_tokens + math.prod(grid)} tokens but x has L={x.shape[1]}")

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_start: int,
                grid: Optional[Tuple[int, ...]]) -> torch.Tensor:
        """``q[B, L, H, d]`` (the last L positions) on ``k, v[B, S, Hk, d]`` (``k[:, 0]`` at ``k_start``)."""
        return sdpa(q, k, v, self.causal, dropout=self.attn_drop if self.training else 0.0)

    def _keep_from(self, next_pos: int) -> int:
        """First absolute key position any query at ``>= next_pos`` can see (cache trimming)."""
        return 0

    def _out(self, o: torch.Tensor) -> torch.Tensor:
        return self.proj(rearrange(o, "b l h d -> b l (h d)"))

    # -- contract --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *, grid: Optional[Sequence[int]] = None,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x[B, L, D] -> [B, L, D]``; ``grid`` overrides the stored grid for this call and
        ``positions`` (``[L]``, ``[L, ndim]`` or ``[B, L, ndim]``) the RoPE coordinates."""
        self._check_input(x)
        grid = self._resolve_grid(grid)
        if self.rope is not None and self.rope.ndim > 1 and positions is None:
            if grid is None:
                raise ValueError(f"{type(self).__name__} with {self.rope.ndim}-D RoPE needs a grid "
                                 "(grid= at construction, set_grid() or forward(grid=))")
            self._check_grid_tokens(x, grid)
        q, k, v = self._project(x)
        q, k = (self._rotate(t, 0, grid, positions) for t in (q, k))
        return self._out(self._attend(q, k, v, 0, grid))

    def init_state(self, batch: int, device=None, dtype=None) -> Dict:
        """Empty KV cache ``k, v[B, 0, Hk, d]`` and the stream position ``pos``."""
        self._require_causal("init_state")
        dtype = dtype or self.qkv.weight.dtype
        shape = (batch, 0, self.num_kv_heads, self.head_dim)
        return {"k": torch.zeros(shape, device=device, dtype=dtype),
                "v": torch.zeros(shape, device=device, dtype=dtype), "pos": 0}

    def step(self, x: torch.Tensor, state: Dict) -> Tuple[torch.Tensor, Dict]:
        """Next chunk ``x[B, l, D]``: RoPE positions continue from ``state['pos']``."""
        self._require_causal("step")
        self._check_input(x)
        pos, grid = state["pos"], self.grid
        if self.rope is not None and self.rope.ndim > 1 and grid is None:
            raise ValueError(f"{type(self).__name__} with {self.rope.ndim}-D RoPE needs a grid to stream")
        q, k, v = self._project(x)
        q, k = (self._rotate(t, pos, grid, None) for t in (q, k))
        k = torch.cat([state["k"].to(k.dtype), k], dim=1)
        v = torch.cat([state["v"].to(v.dtype), v], dim=1)
        k_start = pos - state["k"].shape[1]
        o = self._attend(q, k, v, k_start, grid)
        new_pos = pos + x.shape[1]
        cut = max(self._keep_from(new_pos) - k_start, 0)
        return self._out(o), {"k": k[:, cut:], "v": v[:, cut:], "pos": new_pos}

    def extra_repr(self) -> str:
        rope = f", rope={self.rope.ndim}d" if self.rope is not None else ""
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}{rope}")
