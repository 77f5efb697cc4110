"""Chunked (gated) delta rule in pure PyTorch: the WY / UT-transform form, the default everywhere.

Per chunk of ``C`` tokens with state ``S`` ``[K, V]`` at its start (DeltaNet parallelisation,
https://arxiv.org/abs/2406.06484; gated: https://arxiv.org/abs/2412.06464), with ``G`` the
within-chunk cumulative log-decay and ``D_ij = exp(G_i - G_j)`` for ``j <= i`` (0 above):

    T = (I + strictly_lower(diag(beta) (K K^T * D)))^{-1}          (one batched triangular solve)
    W = T diag(beta exp(G)) K,   U = T diag(beta) V                 (the UT transform)
    V_new = U - W S                                                 (corrected values)
    O = diag(exp(G)) Q S + ((Q K^T) * D) V_new
    S' = exp(G_C) S + (diag(exp(G_C - G)) K)^T V_new

All chunks' ``T``, ``W``, ``U`` and intra-chunk products are computed at once; only the two small
state products run in a loop over chunks (without autograd, each chunk's output too).  Exponents
are within-chunk differences, masked before ``exp``, so strong decays never overflow whatever the
sequence length.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from ..._utils import check_positive
from .._dispatch import dispatch, register_impl
from ._common import check_inputs, run_delta_rule

CHUNK_SIZE = 32  # tuned on 2 CPU threads (T=4096, H=4, K=V=64): 16 and 32 tie, 64 and 128 are slower


def _chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
             beta: torch.Tensor, initial_state: Optional[torch.Tensor], output_final_state: bool,
             chunk_size: int = CHUNK_SIZE) -> Tuple[torch.Tensor, torch.Tensor]:
    B, T, H, K = q.shape
    V, C = v.shape[-1], chunk_size
    pad = (-T) % C  # zero tokens at the end (beta = 0, g = 0) leave the state untouched
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        beta = F.pad(beta, (0, 0, 0, pad))
        g = None if g is None else F.pad(g, (0, 0, 0, pad))
    # [N, BH, C, d], one contiguous copy each: the matmuls below would copy the views again and again
    q, k, v = (rearrange(t, "b (n c) h d -> n (b h) c d", c=C).contiguous() for t in (q, k, v))
    beta = rearrange(beta, "b (n c) h -> n (b h) c 1", c=C)  # [N, BH, C, 1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    kk = k @ k.transpose(-1, -2)  # [N, BH, C, C]
    qk = q @ k.transpose(-1, -2)
    if g is None:
        qk = qk.masked_fill(~causal, 0.0)
        k_w, k_out, q_in, chunk_decay = k, k, q, None
    else:
        G = rearrange(g, "b (n c) h -> n (b h) c 1", c=C).cumsum(2)  # [N, BH, C, 1]
        decay = (G - G.transpose(-1, -2)).masked_fill(~causal, float("-inf")).exp()  # [N, BH, C, C]
        kk, qk = kk * decay, qk * decay
        decay_in = G.exp()  # from the chunk start: [N, BH, C, 1]
        k_w, q_in = k * decay_in, q * decay_in
        k_out = k * (G[:, :, -1:] - G).exp()  # each key decayed to the chunk end
        chunk_decay = decay_in[:, :, -1:]  # [N, BH, 1, 1]
    # UT transform: T = (I + strictly_lower(diag(beta) kk))^-1 (the solve reads only the strict
    # lower triangle), then W = T diag(beta) k_w, U = T diag(beta) v
    eye = torch.eye(C, dtype=q.dtype, device=q.device).expand_as(kk)
    t_beta = torch.linalg.solve_triangular(kk * beta, eye, upper=False, unitriangular=True)
    t_beta = t_beta * beta.transpose(-1, -2)  # T diag(beta): [N, BH, C, C]
    w, u = t_beta @ k_w, t_beta @ v  # [N, BH, C, K], [N, BH, C, V]
    S = q.new_zeros(B * H, K, V) if initial_state is None else initial_state.reshape(B * H, K, V)
    decays = [None] * q.shape[0] if chunk_decay is None else chunk_decay.unbind(0)
    # without autograd each chunk's output is formed in the loop (no stacked [N, K, V] states:
    # ~20% faster forward); with it, the states and corrected values are stacked for two batched
    # products (fewer autograd nodes: ~10% faster forward + backward), measured on CPU
    per_chunk = not torch.is_grad_enabled()
    o, starts, v_new = [], [], []
    # unbind (not x[n]) so that the backward of each slice is not a full-size zero tensor
    for u_n, w_n, k_n, d_n, q_n, qk_n in zip(u.unbind(0), w.unbind(0), k_out.transpose(-1, -2).unbind(0),
                                            decays, q_in.unbind(0), qk.unbind(0)):
        vn = torch.baddbmm(u_n, w_n, S, alpha=-1.0)  # [BH, C, V]
        if per_chunk:
            o.append(torch.baddbmm(q_n @ S, qk_n, vn))  # the state's part and the chunk's own
        else:
            starts.append(S)
            v_new.append(vn)
        S = torch.baddbmm(S if d_n is None else S * d_n, k_n, vn)
    o = torch.stack(o) if per_chunk else q_in @ torch.stack(starts) + qk @ torch.stack(v_new)  # [N, BH, C, V]
    o = rearrange(o, "n (b h) c v -> b (n c) h v", b=B)[:, :T]
    return o, S.reshape(B, H, K, V)


@register_impl("chunk_gated_delta_rule", "chunk")
def chunked_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                             beta: torch.Tensor, scale: Optional[float] = None,
                             initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                             reverse: bool = False, use_qk_l2norm_in_kernel: bool = False,
                             chunk_size: int = CHUNK_SIZE):
    """The chunked implementation behind ``chunk_gated_delta_rule`` (``chunk_size`` exposed)."""
    check_positive("chunk_size", chunk_size)
    return run_delta_rule(_chunked, q, k, v, g, beta, scale, initial_state, output_final_state,
                          reverse, use_qk_l2norm_in_kernel, chunk_size=chunk_size)


@register_impl("chunk_delta_rule", "chunk")
def chunked_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                       scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                       output_final_state: bool = False, reverse: bool = False,
                       use_qk_l2norm_in_kernel: bool = False, chunk_size: int = CHUNK_SIZE):
    """The chunked implementation behind ``chunk_delta_rule`` (``chunk_size`` exposed)."""
    return chunked_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state,
                                    reverse, use_qk_l2norm_in_kernel, chunk_size)


def chunk_gated_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                           beta: torch.Tensor, scale: Optional[float] = None,
                           initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                           reverse: bool = False, use_qk_l2norm_in_kernel: bool = False):
    """Gated delta rule (Gated DeltaNet), chunked; drop-in for ``fla.ops.gated_delta_rule``.

    ``S_t = (I - beta_t k_t k_t^T) exp(g_t) S_{t-1} + beta_t k_t v_t^T`` with state ``[K, V]``,
    ``o_t = S_t^T (scale q_t)``.

    Args:
        q, k: ``[B, T, H, K]``.
        v: ``[B, T, H, V]``.
        g: ``[B, T, H]`` log-decays (<= 0 for a decay).
        beta: ``[B, T, H]`` write strengths (usually sigmoid outputs).
        scale: query scale; None means ``K ** -0.5``.
        initial_state: fp32 ``[B, H, K, V]`` state before the first token.
        output_final_state: also return the state after the last token.
        reverse: run right-to-left (the op on the flipped sequence, output flipped back).
        use_qk_l2norm_in_kernel: L2-normalise q and k over K first.

    Returns:
        ``(o[B, T, H, V] in v's dtype, final_state[B, H, K, V] fp32 or None)``.
    """
    check_inputs(q, k, v, g, beta, initial_state)
    return dispatch("chunk_gated_delta_rule", q.device)(
        q, k, v, g, beta, scale, initial_state, output_final_state, reverse, use_qk_l2norm_in_kernel)


def chunk_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                     output_final_state: bool = False, reverse: bool = False,
                     use_qk_l2norm_in_kernel: bool = False):
    """Delta rule (DeltaNet), chunked; drop-in for ``fla.ops.delta_rule.chunk_delta_rule``.

    ``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T (scale q_t)``;
    arguments and returns as :func:`chunk_gated_delta_rule` without ``g``.
    """
    check_inputs(q, k, v, None, beta, initial_state)
    return dispatch("chunk_delta_rule", q.device)(
        q, k, v, beta, scale, initial_state, output_final_state, reverse, use_qk_l2norm_in_kernel)
