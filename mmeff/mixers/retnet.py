"""Multi-scale retention (RetNet): linear attention with a fixed decay per head.

Retentive Network: A Successor to Transformer for Large Language Models (Sun et al. 2023),
https://arxiv.org/abs/2307.08621.  Per head ``h`` with ``gamma_h = 1 - 2^(-5-h)``:

    S_t = gamma_h S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(d_k),   q, k rotated by position (xPos/RoPE)
    MSR(X) = (swish(X W_G) * GroupNorm_h(o)) W_O

with ``W_Q, W_K`` ``[D, D]``, ``W_V, W_G`` ``[D, 2D]`` and ``W_O`` ``[2D, D]`` (the paper's parameter
allocation, ``8 D^2``, no biases; the GroupNorm has no affine parameters, as in the reference
code).  The retention runs on :func:`~mmeff.ops.chunk_simple_gla` with ``g = log(gamma)``; the
rotation is RoPE (rotate-half layout), the xPos rotation without its length extrapolation scaling.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_divisible, check_positive
from ..layers.rope import RotaryEmbedding
from ._gated_scan import GatedScanMixer, gla_scan
from .base import register_mixer


def retention_log_decays(num_heads: int) -> torch.Tensor:
    """``log(1 - 2^(-5 - h))`` for h = 0..H-1: the per-head log-decays of multi-scale retention."""
    return torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(num_heads, dtype=torch.float64))).float()


@register_mixer("retnet")
class MultiScaleRetention(GatedScanMixer):
    """RetNet's multi-scale retention layer.

    Parameters: ``2 * D * Kd + 2 * D * Vd + Vd * D`` with ``Kd = D`` and ``Vd = expand_v * D``
    (``8 D^2`` at the paper's ``expand_v=2``).

    Args:
        dim: model width D.
        causal: causal (and streaming) if True; bidirectional (forward + reverse retention,
            averaged) if False.
        num_heads: H; query/key head width ``D / H`` must be even (rotary pairs).
        expand_v: value/gate width as a multiple of ``dim``.
        norm_eps: epsilon of the per-head GroupNorm.
        rope_base: rotary frequency base.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 4, expand_v: float = 2.0,
                 norm_eps: float = 1e-5, rope_base: float = 10000.0, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        value_dim = int(dim * expand_v)
        if value_dim != dim * expand_v or value_dim % num_heads:
            raise ValueError(f"dim * expand_v ({dim} * {expand_v}) must be an int divisible by "
                             f"num_heads ({num_heads})")
        fk = dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim, self.head_v_dim = num_heads, dim // num_heads, value_dim // num_heads
        self.norm_eps = norm_eps
        self.state_shape = (num_heads, self.head_dim, self.head_v_dim)
        self.rotary = RotaryEmbedding(self.head_dim, base=rope_base)
        self.in_proj = nn.Linear(dim, 2 * dim + 2 * value_dim, bias=False, **fk)  # q | k | v | gate
        self.out_proj = nn.Linear(value_dim, dim, bias=False, **fk)
        self.register_buffer("log_decay", retention_log_decays(num_heads).to(device), persistent=False)

    def _mix(self, x: torch.Tensor, state: Optional[Dict[str, torch.Tensor]]):
        B, L, D = x.shape
        Vd = self.num_heads * self.head_v_dim
        pos = torch.arange(L, device=x.device)  # [L], or each stream's own positions [B, L]
        if state is not None:
            pos = state["pos"][:, None] + pos
        q, k, v, gate = self.in_proj(x).split([D, D, Vd, Vd], dim=-1)
        q, k = (self.rotary(rearrange(t, "b l (h d) -> b l h d", h=self.num_heads), pos[..., None])
                for t in (q, k))  # [B, L, H, d]
        v = rearrange(v, "b l (h d) -> b l h d", h=self.num_heads)
        g = self.log_decay.expand(B, L, -1)  # [B, L, H]
        o, rec = gla_scan(q, k, v, g, per_key=False, causal=self.causal,
                          state=None if state is None else state["recurrent"])
        o = F.layer_norm(o, (self.head_v_dim,), eps=self.norm_eps)  # GroupNorm over each head
        y = self.out_proj(rearrange(o, "b l h d -> b l (h d)") * F.silu(gate))
        return y, (None if state is None else {"recurrent": rec, "pos": state["pos"] + L})

    def _extra_state(self, batch: int, device, dtype) -> Dict[str, torch.Tensor]:
        return {"pos": torch.zeros(batch, dtype=torch.long, device=device)}  # each stream's next position

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"head_v_dim={self.head_v_dim}")
