"""Reference gated linear attention: a plain fp32 loop over time, the spec of both families.

With the state ``S_t`` ``[K, V]`` per head and ``g_t`` a log-decay (per key channel for GLA,
https://arxiv.org/abs/2312.06635; one per head for simple GLA / RetNet / Lightning attention,
broadcast over ``K``):

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = (scale q_t) S_t.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._dispatch import register_impl
from ._common import run_gla


def naive_recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                     scale: float, initial_state: Optional[torch.Tensor],
                     output_final_state: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The loop over tokens; ``g`` None, ``[B, T, H, 1]`` or ``[B, T, H, K]``."""
    B, T, H, K = q.shape
    q = q * scale
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state  # [B, H, K, V]
    gates = [None] * T if g is None else g.unbind(1)
    o = []
    for q_t, k_t, v_t, g_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), gates):  # [B, H, d]
        if g_t is not None:
            S = S * g_t.exp()[..., None]  # [B, H, K or 1, 1] broadcast over V
        S = S + k_t[..., :, None] * v_t[..., None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    return torch.stack(o, dim=1), S  # [B, T, H, V], [B, H, K, V]


@register_impl("chunk_gla", "naive")
def naive_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
              scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
              output_final_state: bool = False, reverse: bool = False):
    """GLA by a loop over tokens; same arguments and returns as ``chunk_gla``."""
    return run_gla(naive_recurrence, q, k, v, g, scale, initial_state, output_final_state, reverse)
