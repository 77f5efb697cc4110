"""Reference SSD (Mamba-2's scan): a plain fp32 loop over time, the spec.

Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
Duality (Dao, Gu 2024), https://arxiv.org/abs/2405.21060: a scalar decay per head,
``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, ``y_t = h_t C_t + D x_t``, optionally gated by
``silu(z_t)``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from einops import repeat

from .._dispatch import register_impl
from ._common import Result, run_ssd


def naive_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: Optional[torch.Tensor], chunk_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One token at a time (see :mod:`._common` for the layouts); ``chunk_size`` is unused."""
    b, _, h, p = x.shape
    B, C = (repeat(t, "b l g n -> b l (g e) n", e=h // t.shape[2]) for t in (B, C))  # [B, L, H, N]
    state = x.new_zeros(b, h, p, B.shape[-1]) if h0 is None else h0  # [B, H, P, N]
    ys = []
    # unbind, not indexing, so that autograd gathers the per-token gradients once
    for x_t, dt_t, B_t, C_t in zip(*(t.unbind(1) for t in (x, dt, B, C))):
        decay = torch.exp(dt_t * A)[..., None, None]  # [B, H, 1, 1]
        state = decay * state + (dt_t[..., None] * x_t)[..., None] * B_t[:, :, None, :]
        ys.append((state * C_t[:, :, None, :]).sum(-1))  # [B, H, P]
    return torch.stack(ys, dim=1), state


@register_impl("mamba_chunk_scan_combined", "naive")
def ssd_naive(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
              chunk_size: int, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
              dt_bias: Optional[torch.Tensor] = None, initial_states: Optional[torch.Tensor] = None,
              dt_softplus: bool = False, return_final_states: bool = False,
              reverse: bool = False) -> Result:
    """SSD by a loop over tokens; same arguments and returns as ``mamba_chunk_scan_combined``."""
    return run_ssd(naive_core, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                   dt_softplus, return_final_states, reverse)
