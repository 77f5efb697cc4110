"""Reference selective scan (Mamba-1's S6): a plain fp32 loop over time, the spec.

Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Gu, Dao 2023),
https://arxiv.org/abs/2312.00752, Algorithm 2: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``,
``y_t = C_t h_t + D u_t``, optionally gated by ``silu(z_t)``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from einops import repeat

from .._dispatch import register_impl
from ._common import Result, run_selective_scan


def naive_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One token at a time (see :mod:`._common` for the layouts)."""
    b, d, _ = x.shape
    B, C = (repeat(t, "b g n l -> b (g e) n l", e=d // t.shape[1]) for t in (B, C))  # [B, D, N, L]
    h = x.new_zeros(b, d, A.shape[1]) if h0 is None else h0  # [B, D, N]
    ys = []
    # unbind, not indexing, so that autograd gathers the per-token gradients once
    for dt_t, x_t, B_t, C_t in zip(*(t.unbind(-1) for t in (dt, x, B, C))):
        h = torch.exp(dt_t[..., None] * A) * h + x_t[..., None] * B_t
        ys.append((h * C_t).sum(-1))  # [B, D]
    return torch.stack(ys, dim=-1), h


@register_impl("selective_scan_fn", "naive")
def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                       C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: Optional[torch.Tensor] = None,
                       reverse: bool = False) -> Result:
    """Selective scan by a loop over tokens; same arguments and returns as ``selective_scan_fn``."""
    return run_selective_scan(naive_core, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                              return_last_state, initial_state, reverse)
