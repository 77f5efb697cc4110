"""Gated DeltaNet: DeltaNet with a Mamba-2-style decay gate.

Gated Delta Networks: Improving Mamba2 with Delta Rule (Yang, Kautz, Hatamizadeh 2024),
https://arxiv.org/abs/2412.06464; layer as in fla's ``GatedDeltaNet``: DeltaNet's layer
(:mod:`.deltanet`) plus ``g = -exp(A_log) * softplus(x W_a + dt_bias)`` per head and token, the gated
delta rule, and the output gate ``RMSNorm(o) * silu(x W_g)`` on by default, with values
``expand_v`` (2) times wider than keys.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import register_mixer
from .deltanet import DeltaNet


@register_mixer("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet layer.

    Parameters: DeltaNet's (see :class:`DeltaNet`) plus ``D*H`` for the decay input ``W_a`` and
    ``2*H`` for ``A_log`` and ``dt_bias``.  With the defaults (``Kd = 0.75*D``, ``expand_v=2``,
    ``use_gate=True``) that is the paper's ~``6*D^2`` per layer.

    Args:
        dim, causal, num_heads, use_gate, conv_size, conv_bias, norm_eps, device, dtype: as DeltaNet.
        head_dim: query/key width per head; defaults to ``round(0.75 * dim / num_heads)`` (the
            paper's key width of 0.75 D).
        expand_v: value width per head as a multiple of ``head_dim``.
        dt_min, dt_max, dt_init_floor: range of the initial time steps ``softplus(dt_bias)``.
        a_init_range: range of the initial ``A = exp(A_log)``.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 4,
                 head_dim: Optional[int] = None, expand_v: float = 2.0, use_gate: bool = True,
                 conv_size: int = 4, conv_bias: bool = False, norm_eps: float = 1e-5,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 a_init_range: Tuple[float, float] = (1.0, 16.0), device=None, dtype=None) -> None:
        if head_dim is None and isinstance(num_heads, int) and num_heads > 0:
            head_dim = max(1, round(0.75 * dim / num_heads))
        super().__init__(dim, causal=causal, num_heads=num_heads, head_dim=head_dim,
                         expand_v=expand_v, use_gate=use_gate, conv_size=conv_size,
                         conv_bias=conv_bias, norm_eps=norm_eps, device=device, dtype=dtype)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if not 0 < a_init_range[0] <= a_init_range[1]:
            raise ValueError(f"a_init_range must be (lo, hi) with 0 < lo <= hi, got {a_init_range}")
        H = self.num_heads
        # Mamba-2 init: dt log-uniform in [dt_min, dt_max], dt_bias = softplus^-1(dt); A uniform
        dt = torch.exp(torch.rand(H, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(dtype or torch.float32))
        A = torch.empty(H, device=device).uniform_(*a_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype or torch.float32))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True

    def _extra_projections(self) -> Dict[str, int]:
        return {"a": self.num_heads}

    def _log_decay(self, parts: Dict[str, torch.Tensor]) -> torch.Tensor:
        # g = -exp(A_log) * softplus(x W_a + dt_bias), in fp32: [B, L, H]
        return -self.A_log.float().exp() * F.softplus(parts["a"].float() + self.dt_bias.float())
