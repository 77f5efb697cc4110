"""Reference (gated) delta rule: a plain fp32 loop over time, written as the paper's transition.

State convention (fla's): ``S_t`` is ``[K, V]`` per head and, with ``g`` a log-decay,

    S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T (scale q_t).

This is the transpose of the ``[V, K]`` form ``S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) +
beta_t v_t k_t^T`` of DeltaNet (https://arxiv.org/abs/2406.06484) and Gated DeltaNet
(https://arxiv.org/abs/2412.06464); ``g=None`` is the plain delta rule.  The transitions and
inputs of all tokens are formed first, then the loop is the linear recurrence
``S_t = A_t S_{t-1} + X_t`` itself: the spec the faster forms are tested against, not a copy of
their rank-1 update.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._dispatch import register_impl
from ._common import run_delta_rule


def _recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                beta: torch.Tensor, initial_state: Optional[torch.Tensor],
                output_final_state: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    B, _, H, K = q.shape
    b = beta[..., None, None]  # [B, T, H, 1, 1]
    eye = torch.eye(K, dtype=q.dtype, device=q.device)
    A = eye - b * k[..., :, None] * k[..., None, :]  # transitions: [B, T, H, K, K]
    if g is not None:
        A = A * g.exp()[..., None, None]
    X = b * k[..., :, None] * v[..., None, :]  # inputs: [B, T, H, K, V]
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state  # [B, H, K, V]
    states = []
    for A_t, X_t in zip(A.unbind(1), X.unbind(1)):  # unbind, not A[:, t]: its backward is O(T) each
        S = A_t @ S + X_t
        states.append(S)
    o = torch.einsum("bthk,bthkv->bthv", q, torch.stack(states, dim=1))
    return o, S  # [B, T, H, V], [B, H, K, V]


@register_impl("chunk_gated_delta_rule", "naive")
def naive_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                           beta: torch.Tensor, scale: Optional[float] = None,
                           initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                           reverse: bool = False, use_qk_l2norm_in_kernel: bool = False):
    """Gated delta rule by a loop over tokens; same arguments and returns as ``chunk_gated_delta_rule``."""
    return run_delta_rule(_recurrence, q, k, v, g, beta, scale, initial_state, output_final_state,
                          reverse, use_qk_l2norm_in_kernel)


@register_impl("chunk_delta_rule", "naive")
def naive_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                     output_final_state: bool = False, reverse: bool = False,
                     use_qk_l2norm_in_kernel: bool = False):
    """Delta rule by a loop over tokens; same arguments and returns as ``chunk_delta_rule``."""
    return naive_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state,
                                  reverse, use_qk_l2norm_in_kernel)
