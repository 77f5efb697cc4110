"""Chunked gated linear attention in pure PyTorch: the default form of both families.

The sequence is cut into chunks of ``C`` tokens.  With ``G`` the within-chunk cumulative
log-decay (``G_i = g_1 + ... + g_i``, a chunk's own tokens only), ``S`` the state at the chunk's
start and ``G_C`` its last row:

    O  = (Q * exp(G)) S + A V,            A_ij = sum_d q_id k_jd exp(G_id - G_jd)  (j <= i)
    S' = exp(G_C) * S + (K * exp(G_C - G))^T V

``A`` for every chunk, the chunk-state contributions and the inter-chunk outputs are each one
batched matmul; the only loop is the cheap ``S' = exp(G_C) * S + dS`` over chunks.  Long inputs
go through in segments of whole chunks on CPU (about 1 MB per tensor, state carried across) so the
temporaries stay in cache: 1.3-1.7x faster there than all chunks at once.  A per-head decay
(simple GLA) is the same computation with ``G`` broadcast over the key channels.

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

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .._chunks import pass_states, use_matmul
from .._dispatch import dispatch, register_impl
from ._common import check_inputs, run_gla

CHUNK_SIZE = 64  # measured on CPU (2 threads, T=4096, H=4, D=64): 32 and 128 are slower
SEGMENT_SIZE = 2 ** 18  # elements per [B, H, L, D] tensor of a segment: 1 MB fp32 (measured best)
SAFE_SPAN = 120.0  # blocks whose cumulative decay spans less are factorised at once


def _safe(G: torch.Tensor) -> bool:
    """Whether every block's cumulative decay spans at most ``SAFE_SPAN`` (per channel)."""
    return bool((G.amax(-2) - G.amin(-2)).amax() <= SAFE_SPAN)


def _midrange(G: torch.Tensor) -> torch.Tensor:
    """``[..., n, d] -> [..., 1, d]``: the middle of each block's range (a reference, no gradient)."""
    return ((G.amax(-2, keepdim=True) + G.amin(-2, keepdim=True)) / 2).detach()


def _decayed(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor, r_q: torch.Tensor, r_k: torch.Tensor):
    """``q exp(G - r_q)`` and ``k exp(r_k - G)``: queries and keys decayed relative to references."""
    return q * (G - r_q).exp(), k * (r_k - G).exp()


def _intra(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``A = tril(sum_d q_id k_jd exp(G_id - G_jd))``: q, k ``[..., n, K]`` -> ``[..., n, n]``.

    ``G`` ``[..., n, K or 1]`` is a cumulative log-decay; ``n`` is a power of two.
    """
    if _safe(G):  # one factorisation around the mid-range (always, for single tokens)
        r = _midrange(G)
        q_dec, k_dec = _decayed(q, k, G, r, r)  # exponents within +-SAFE_SPAN / 2
        return (q_dec @ k_dec.transpose(-1, -2)).tril_()
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
                     scale: float, initial_state: Optional[torch.Tensor], output_final_state: bool,
                     chunk_size: int = CHUNK_SIZE) -> Tuple[torch.Tensor, torch.Tensor]:
    """The chunked core; ``g`` None, ``[B, T, H, 1]`` or ``[B, T, H, K]``.

    On CPU it runs segment by segment (whole chunks, about ``SEGMENT_SIZE`` elements per
    ``[B, H, L, D]`` tensor) so that each segment's temporaries stay in cache, carrying the state
    across; on a GPU all chunks go at once (segments there only add launches: 4-20x slower at
    16k-64k tokens on an H100).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    if g is None:  # no decay: the per-head form with g = 0
        g = q.new_zeros(B, T, H, 1)
    C = min(chunk_size, 1 << max(T - 1, 0).bit_length())  # short inputs use a short chunk
    L = C * max(1, SEGMENT_SIZE // (B * H * C * max(K, V))) if q.device.type == "cpu" else T
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    outs = []
    for t in range(0, T, L):
        o, S = _segment(q[:, t:t + L], k[:, t:t + L], v[:, t:t + L], g[:, t:t + L], scale, S, C)
        outs.append(o)
    return torch.cat(outs, dim=1), S  # [B, T, H, V]


def _segment(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float,
             S: torch.Tensor, C: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """All chunks of one segment at once, from the state ``S`` at its start."""
    B, T, H, K = q.shape
    pad = (-T) % C  # zero tokens at the end (k = 0, g = 0) leave the state untouched
    if pad:
        q, k, v, g = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v, g))
    # one copy each into the chunk-major layout: every matmul below then runs without copies
    q, k, v = (rearrange(t, "b (n c) h d -> b h n c d", c=C).contiguous() for t in (q, k, v))
    G = rearrange(g, "b (n c) h d -> b h n c d", c=C).cumsum(-2)  # [B, H, N, C, 1 or K]
    G_end = G[..., -1:, :]  # [B, H, N, 1, 1 or K]
    # queries and keys decayed relative to per-chunk references r_q, r_k (scale folded into r_q);
    # the state terms below undo the references with small [.., 1 or K, 1] factors
    if _safe(G):  # the usual case: one factorisation around the mid-range gives A as well
        r_q = r_k = _midrange(G)
        q_dec, k_dec = _decayed(q, k, G, r_q - math.log(scale), r_k)
        A = (q_dec @ k_dec.transpose(-1, -2)).tril_()  # [B, H, N, C, C]
    else:  # strong decay: A by halving; references at the chunk's start (queries) and end (keys)
        r_q, r_k = torch.zeros_like(G_end), G_end
        A = _intra(q * scale, k, G)
        q_dec, k_dec = _decayed(q, k, G, r_q - math.log(scale), r_k)
    state_in = r_q.exp().transpose(-1, -2)  # [B, H, N, 1 or K, 1]: q_dec S_in = scale q exp(G) S
    state_out = (G_end - r_k).exp().transpose(-1, -2)  # keys' decay from r_k to the chunk end
    dS = k_dec.transpose(-1, -2) @ v  # [B, H, N, K, V]: each chunk's own contribution
    if G.shape[-1] == 1 and use_matmul(q, G.shape[2]):  # per-head decay on a GPU: one matmul
        states = pass_states(S, state_out * dS, G_end[..., 0, 0], matmul=True)  # [B, H, N+1, K, V]
        starts, S = state_in * states[:, :, :-1], states[:, :, -1]
    else:
        starts, S = _pass_loop(S, dS, G_end.exp().transpose(-1, -2), state_in, state_out)
    o = torch.baddbmm((A @ v).flatten(0, 2), q_dec.flatten(0, 2), starts.flatten(0, 2))  # A V + Q S
    return rearrange(o, "(b h n) c v -> b (n c) h v", b=B, h=H)[:, :T], S


def _pass_loop(S: torch.Tensor, dS: torch.Tensor, chunk_decay: torch.Tensor, state_in: torch.Tensor,
               state_out: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """States entering each chunk (times ``state_in``) and the last one, chunk after chunk:
    ``S' = chunk_decay * S + state_out * dS`` (per-channel decays ``[B, H, N, K or 1, 1]``)."""
    starts = []
    # unbind, not dS[:, :, n]: autograd then stacks the per-chunk gradients once instead of
    # scattering each into a zero tensor of the full size
    per_chunk = (t.unbind(2) for t in (dS, chunk_decay, state_in, state_out))
    for dS_n, decay_n, in_n, out_n in zip(*per_chunk):
        starts.append(in_n * S)
        S = torch.addcmul(decay_n * S, out_n, dS_n)
    return torch.stack(starts, dim=2), S  # [B, H, N, K, V], [B, H, K, V]


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
    check_inputs(q, k, v, g, initial_state, per_key=True, scale=scale)
    return dispatch("chunk_gla", q.device)(q, k, v, g, scale, initial_state, output_final_state, reverse)
