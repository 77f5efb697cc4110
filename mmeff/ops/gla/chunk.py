"""Chunked gated linear attention in pure PyTorch: the default form of both families.

The sequence is cut into chunks of ``C`` tokens.  With ``G`` the within-chunk cumulative
log-decay (``G_i = g_1 + ... + g_i``, a chunk's own tokens only), ``S`` the state at the chunk's
start and ``G_C`` its last row:

    O  = (Q * exp(G)) S + A V,            A_ij = sum_d q_id k_jd exp(G_id - G_jd)  (j <= i)
    S' = exp(G_C) * S + (K * exp(G_C - G))^T V

``A`` for every chunk, the chunk-state contributions and the inter-chunk outputs are each one
batched matmul; the only loop is the cheap ``S' = exp(G_C) * S + dS`` over chunks.  A per-head
decay (simple GLA) is the same computation with ``G`` broadcast over the key channels.

Exponents are cumulative decays *inside one chunk* (never across the sequence), so nothing grows
with the sequence length.  ``A`` is one matmul, ``tril((Q * exp(G - r)) (K * exp(r - G))^T)``
with ``r`` the mid-range of each chunk's ``G`` per channel, when every chunk's ``G`` spans at
most ``SAFE_SPAN`` (all exponents then within +-60, far from fp32 overflow): the usual case, and
its factors also give ``Q * exp(G)`` and ``K * exp(G_C - G)``.  Under stronger decays the chunk
is halved: the second half attends to the first through ``q exp(G - r)`` and ``k exp(r - G)``
with ``r`` the decay through the first half (both factors <= 1), and each half recurses until it
is safe (a single token always is).  This is the secondary chunking of fla's kernels
(https://arxiv.org/abs/2312.06635, Sec. 4.2), applied only where the decay demands it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .._dispatch import dispatch, register_impl
from ._common import check_inputs, run_gla

CHUNK_SIZE = 64  # measured on CPU (see the ops report): 32 and 128 are slower at T=4096, D=64
SAFE_SPAN = 120.0  # blocks whose cumulative decay spans less are factorised at once


def _safe(G: torch.Tensor) -> bool:
    """Whether every block's cumulative decay spans at most ``SAFE_SPAN`` (per channel)."""
    return bool((G.amax(-2) - G.amin(-2)).amax() <= SAFE_SPAN)


def _factorised(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor):
    """``A = tril((q exp(G - r)) (k exp(r - G))^T)`` for a safe ``G``, ``r`` its mid-range.

    Every exponent lies within ``+-SAFE_SPAN / 2``.  Returns ``A``, both factors and ``r``
    ``[..., 1, K or 1]`` (A does not depend on r, so r carries no gradient).
    """
    r = ((G.amax(-2, keepdim=True) + G.amin(-2, keepdim=True)) / 2).detach()
    q_dec, k_inc = q * (G - r).exp(), k * (r - G).exp()
    return (q_dec @ k_inc.transpose(-1, -2)).tril(), q_dec, k_inc, r


def _intra(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``A = tril(sum_d q_id k_jd exp(G_id - G_jd))``: q, k ``[..., n, K]`` -> ``[..., n, n]``.

    ``G`` ``[..., n, K or 1]`` is a cumulative log-decay; ``n`` is a power of two.
    """
    if _safe(G):  # always true for single tokens
        return _factorised(q, k, G)[0]
    h = G.shape[-2] // 2
    q2, k2, G2 = (t.unflatten(-2, (2, h)) for t in (q, k, G))  # [..., 2, h, K]: the two halves
    r = G2[..., 0, -1:, :].detach()  # [..., 1, K] decay through the first half (A is free of r)
    q_late = q2[..., 1, :, :] * (G2[..., 1, :, :] - r).exp()  # exponents <= 0
    k_early = k2[..., 0, :, :] * (r - G2[..., 0, :, :]).exp()
    cross = q_late @ k_early.transpose(-1, -2)  # [..., h, h]: second half attends to the first
    halves = _intra(q2, k2, G2)  # [..., 2, h, h]
    top = F.pad(halves[..., 0, :, :], (0, h))  # [..., h, 2h]
    bottom = torch.cat([cross, halves[..., 1, :, :]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def chunk_recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                     initial_state: Optional[torch.Tensor], output_final_state: bool,
                     chunk_size: int = CHUNK_SIZE) -> Tuple[torch.Tensor, torch.Tensor]:
    """The chunked core; ``g`` None, ``[B, T, H, 1]`` or ``[B, T, H, K]``; q pre-scaled."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, 1 << max(T - 1, 0).bit_length())  # short inputs use a short chunk
    pad = (-T) % C  # zero tokens at the end (k = 0, g = 0) leave the state untouched
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        g = None if g is None else F.pad(g, (0, 0, 0, 0, 0, pad))
    # one copy each into the chunk-major layout: every matmul below then runs without copies
    q, k, v = (rearrange(t, "b (n c) h d -> b h n c d", c=C).contiguous() for t in (q, k, v))
    if g is None:
        A = (q @ k.transpose(-1, -2)).tril()
        q_in, k_end, chunk_decay = q, k, None
    else:
        G = rearrange(g, "b (n c) h d -> b h n c d", c=C).cumsum(-2)  # [B, H, N, C, 1 or K]
        G_end = G[..., -1:, :]  # [B, H, N, 1, 1 or K]
        if _safe(G):  # the usual case: the factors of A also serve the inter-chunk terms
            A, q_dec, k_inc, r = _factorised(q, k, G)
            q_in, k_end = q_dec * r.exp(), k_inc * (G_end - r).exp()
        else:
            A = _intra(q, k, G)  # [B, H, N, C, C]
            q_in = q * G.exp()  # queries see the chunk-start state decayed up to them
            k_end = k * (G_end - G).exp()  # keys decayed to the chunk end
        chunk_decay = G_end.transpose(-1, -2).exp()  # [B, H, N, 1 or K, 1]
    dS = k_end.transpose(-1, -2) @ v  # [B, H, N, K, V]: each chunk's own contribution
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    starts = []
    # unbind, not dS[:, :, n]: autograd then stacks the per-chunk gradients once instead of
    # scattering each into a zero tensor of the full size
    decays = [None] * q.shape[2] if chunk_decay is None else chunk_decay.unbind(2)
    for dS_n, decay_n in zip(dS.unbind(2), decays):
        starts.append(S)
        S = dS_n + S if decay_n is None else torch.addcmul(dS_n, decay_n, S)
    starts = torch.stack(starts, dim=2)  # [B, H, N, K, V] the state at each chunk's start
    o = torch.baddbmm((A @ v).flatten(0, 2), q_in.flatten(0, 2), starts.flatten(0, 2))  # A V + Q_in S
    return rearrange(o, "(b h n) c v -> b (n c) h v", b=B, h=H)[:, :T], S


def check_chunk_size(chunk_size: int) -> None:
    """Chunks are powers of two (under strong decays the intra-chunk matrix is built by halving)."""
    if not isinstance(chunk_size, int) or chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size!r}")


@register_impl("chunk_gla", "chunk")
def chunked_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                output_final_state: bool = False, reverse: bool = False,
                chunk_size: int = CHUNK_SIZE):
    """The chunked implementation behind ``chunk_gla`` (``chunk_size`` exposed)."""
    check_chunk_size(chunk_size)
    return run_gla(chunk_recurrence, q, k, v, g, scale, initial_state, output_final_state, reverse,
                   chunk_size=chunk_size)


def chunk_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
              scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
              output_final_state: bool = False, reverse: bool = False):
    """Gated linear attention with a per-key-channel decay, chunked; drop-in for ``fla.ops.gla``.

    ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t`` with state ``[K, V]``, ``o_t = (scale q_t) S_t``
    (GLA, HGRN2, RWKV-6-style decays).

    Args:
        q, k: ``[B, T, H, K]``.
        v: ``[B, T, H, V]``.
        g: ``[B, T, H, K]`` log-decays (<= 0), e.g. ``logsigmoid(x) / 16``.
        scale: query scale; None means ``K ** -0.5``.
        initial_state: fp32 ``[B, H, K, V]`` state before the first token.
        output_final_state: also return the state after the last token.
        reverse: run right-to-left (the op on the flipped sequence, output flipped back).

    Returns:
        ``(o[B, T, H, V] in v's dtype, final_state[B, H, K, V] fp32 or None)``.
    """
    check_inputs(q, k, v, g, initial_state, per_key=True)
    return dispatch("chunk_gla", q.device)(q, k, v, g, scale, initial_state, output_final_state, reverse)
