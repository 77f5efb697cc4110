"""Recurrent (gated) delta rule, token by token: the form for decoding and short chunks.

The rank-1 "delta" update of the state ``S`` ``[K, V]``: with ``S <- exp(g_t) S``,
``v_new = beta_t (v_t - S^T k_t)``, ``S <- S + k_t v_new^T``, ``o_t = S^T (scale q_t)`` -- the same
recurrence as :mod:`.naive` without forming the ``K x K`` transition.  All per-token inputs are
prepared in batch before the loop; each step is three small batched matmuls.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from einops import rearrange

from ._common import check_inputs, run_delta_rule


def _fused_recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                      beta: torch.Tensor, initial_state: Optional[torch.Tensor],
                      output_final_state: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    B, T, H, K = q.shape
    q, k = (rearrange(t, "b t h d -> t (b h) 1 d") for t in (q, k))  # [T, BH, 1, K]
    bv = rearrange(v * beta[..., None], "b t h d -> t (b h) 1 d")  # [T, BH, 1, V]
    bk = k * rearrange(beta, "b t h -> t (b h) 1 1")  # [T, BH, 1, K]
    decay = [None] * T if g is None else rearrange(g.exp(), "b t h -> t (b h) 1 1").unbind(0)
    S = q.new_zeros(B * H, K, v.shape[-1]) if initial_state is None else initial_state.reshape(B * H, K, -1)
    o = []
    # unbind (not x[t]) so that the backward of each step's slice is not a full-size zero tensor
    for q_t, k_t, bk_t, bv_t, a_t in zip(q.unbind(0), k.unbind(0), bk.unbind(0), bv.unbind(0), decay):
        if a_t is not None:
            S = S * a_t
        v_new = torch.baddbmm(bv_t, bk_t, S, alpha=-1.0)  # beta (v - S^T k): [BH, 1, V]
        S = torch.baddbmm(S, k_t.transpose(-1, -2), v_new)
        o.append(torch.bmm(q_t, S))
    o = rearrange(torch.stack(o), "t (b h) 1 v -> b t h v", b=B)
    return o, S.reshape(B, H, K, -1)


def fused_recurrent_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                                     beta: torch.Tensor, scale: Optional[float] = None,
                                     initial_state: Optional[torch.Tensor] = None,
                                     output_final_state: bool = False, reverse: bool = False,
                                     use_qk_l2norm_in_kernel: bool = False):
    """Gated delta rule token by token; arguments and returns as ``chunk_gated_delta_rule``."""
    check_inputs(q, k, v, g, beta, initial_state)
    return run_delta_rule(_fused_recurrence, q, k, v, g, beta, scale, initial_state, output_final_state,
                          reverse, use_qk_l2norm_in_kernel)


def fused_recurrent_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                               scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                               output_final_state: bool = False, reverse: bool = False,
                               use_qk_l2norm_in_kernel: bool = False):
    """Delta rule token by token; arguments and returns as ``chunk_delta_rule``."""
    check_inputs(q, k, v, None, beta, initial_state)
    return run_delta_rule(_fused_recurrence, q, k, v, None, beta, scale, initial_state,
                          output_final_state, reverse, use_qk_l2norm_in_kernel)
