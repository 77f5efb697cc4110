"""Gated Linear Attention (GLA): linear attention with a data-dependent decay per key channel.

Gated Linear Attention Transformers with Hardware-Efficient Training (Yang et al. 2023),
https://arxiv.org/abs/2312.06635, Sec. 4.4:

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,   o_t = q_t S_t / sqrt(d_k)
    alpha_t = sigmoid(x_t W_a1 W_a2 + b_a)^(1/tau)          (low-rank gate, rank 16, tau = 16)
    y_t = (swish(x_t W_r + b_r) * Norm_h(o_t)) W_O

with ``d_k = D/2`` and ``d_v = D`` by default, so the projections hold ``4 D^2`` parameters like
softmax attention.  The per-head output norm is an RMSNorm (weight shared by the heads), as in fla.
``log alpha = logsigmoid(.) / tau`` feeds :func:`~mmeff.ops.chunk_gla` directly.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_positive
from ..layers import RmsNorm
from ._gated_scan import GatedScanMixer, gla_scan
from .base import register_mixer


def _width(name: str, dim: int, expand: float, num_heads: int) -> int:
    width = int(dim * expand)
    if width != dim * expand or width <= 0 or width % num_heads:
        raise ValueError(f"dim * {name} ({dim} * {expand}) must be a positive int divisible by "
                         f"num_heads ({num_heads})")
    return width


@register_mixer("gla")
class GatedLinearAttention(GatedScanMixer):
    """GLA layer.

    Parameters (``Kd = expand_k * D``, ``Vd = expand_v * D``, rank ``r``): ``2 * D * Kd + D * Vd``
    for q/k/v, ``D * r + r * Kd + Kd`` for the low-rank gate with bias, ``D * Vd + Vd`` for the
    output gate with bias, ``Vd / H`` for the output norm and ``Vd * D`` for the output projection.

    Args:
        dim: model width D.
        causal: causal (and streaming) if True; bidirectional (forward + reverse scan, averaged)
            if False.
        num_heads: H (4 in the paper).
        expand_k: key width as a multiple of ``dim`` (0.5 in the paper).
        expand_v: value width as a multiple of ``dim`` (1 in the paper).
        gate_low_rank_dim: rank of the decay projection (16).
        gate_logit_normalizer: tau in ``log alpha = logsigmoid(.) / tau`` (16).
        norm_eps: epsilon of the output RMSNorm.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 4, expand_k: float = 0.5,
                 expand_v: float = 1.0, gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0,
                 norm_eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("num_heads", num_heads)
        check_positive("gate_low_rank_dim", gate_low_rank_dim)
        if not gate_logit_normalizer > 0:
            raise ValueError(f"gate_logit_normalizer must be > 0, got {gate_logit_normalizer!r}")
        key_dim = _width("expand_k", dim, expand_k, num_heads)
        value_dim = _width("expand_v", dim, expand_v, num_heads)
        fk = dict(device=device, dtype=dtype)
        self.num_heads = num_heads
        self.head_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.state_shape = (num_heads, self.head_dim, self.head_v_dim)
        self.qkv = nn.Linear(dim, 2 * key_dim + value_dim, bias=False, **fk)
        self.gk_proj = nn.Sequential(nn.Linear(dim, gate_low_rank_dim, bias=False, **fk),
                                     nn.Linear(gate_low_rank_dim, key_dim, bias=True, **fk))
        self.g_proj = nn.Linear(dim, value_dim, bias=True, **fk)  # output gate r_t
        self.o_norm = RmsNorm(self.head_v_dim, eps=norm_eps, **fk)
        self.out_proj = nn.Linear(value_dim, dim, bias=False, **fk)

    def _mix(self, x: torch.Tensor, state: Optional[Dict[str, torch.Tensor]]):
        H, Kd = self.num_heads, self.num_heads * self.head_dim
        q, k, v = (rearrange(t, "b l (h d) -> b l h d", h=H)
                   for t in self.qkv(x).split([Kd, Kd, self.num_heads * self.head_v_dim], dim=-1))
        g = F.logsigmoid(self.gk_proj(x).float()) / self.gate_logit_normalizer  # log alpha, fp32
        g = rearrange(g, "b l (h d) -> b l h d", h=H)
        o, rec = gla_scan(q, k, v, g, per_key=True, causal=self.causal,
                          state=None if state is None else state["recurrent"])
        o = rearrange(self.o_norm(o), "b l h d -> b l (h d)") * F.silu(self.g_proj(x))
        return self.out_proj(o), (None if state is None else {"recurrent": rec})

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"head_v_dim={self.head_v_dim}")
