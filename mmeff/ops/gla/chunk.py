"""Chunked gated linear attention in pure PyTorch: the default form of both families.

The sequence is cut into chunks of ``C`` tokens.  With ``G`` the within-chunk cumulative
log-decay (``G_i = g_1 + ... + g_i``, a chunk's own tokens only), ``S`` the state at the chunk's
start and ``G_C`` its last row:

    O  = (Q * exp(G)) S + A V,            A_ij = sum_d q_id k_jd exp(G_id - G_jd)  (j <= i)
    S' = exp(G_C) * S + (K * exp(G_C - G))^T V

``A`` for every chunk, the chunk-state contributions and the inter-chunk outputs are each one
batched matmul; the only loop is the cheap ``S' = exp(G_C) * S + dS`` over chunks.

Every exponent is a difference of cumulative decays *inside one chunk*, taken so that it is <= 0
(masked to -inf before ``exp`` above the diagonal), so strong decays underflow to 0 and never
overflow, whatever the sequence length.  A per-head decay (simple GLA) gives
``A = (Q K^T) * exp(G_i - G_j)`` directly.  A per-channel decay (GLA) cannot be split into
``exp(G_i) exp(-G_j)`` without overflow, so ``A`` is built by halving: for the two halves of a
block, the cross block is a matmul of ``q exp(G - r)`` and ``k exp(r - G)`` with ``r`` the
cumulative decay at the end of the first half (both factors <= 1), and each half recurses; the
smallest blocks are summed elementwise.  This is the secondary chunking of fla's kernels
(https://arxiv.org/abs/2312.06635, Sec. 4.2), applied at every scale.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .._dispatch import dispatch, register_impl
from ._common import check_inputs, run_gla

CHUNK_SIZE = 64  # measured on CPU (see the ops report): 32 and 128 are slower at T=4096, D=64
SAFE_SPAN = 60.0  # GLA: blocks whose cumulative decay spans less than this are factorised at once


def _causal(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def _intra_per_head(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``A`` for a per-head decay: q, k ``[..., C, K]``, G ``[..., C, 1]`` -> ``[..., C, C]``."""
    diff = (G - G.transpose(-1, -2)).masked_fill(~_causal(G.shape[-2], G.device), float("-inf"))
    return (q @ k.transpose(-1, -2)) * diff.exp()


def _intra_per_key(q: torch.Tensor, k: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``A`` for a per-channel decay: q, k, G ``[..., n, K]`` (n a power of two) -> ``[..., n, n]``."""
    n = G.shape[-2]
    span = (G.amax(-2) - G.amin(-2)).max()  # widest range of cumulative decay in any block
    if n == 1 or span <= SAFE_SPAN:
        # one factorisation around the mid-range r: every exponent lies within +-span/2
        r = ((G.amax(-2, keepdim=True) + G.amin(-2, keepdim=True)) / 2).detach()
        return ((q * (G - r).exp()) @ (k * (r - G).exp()).transpose(-1, -2)).tril()
    h = n // 2
    q2, k2, G2 = (t.unflatten(-2, (2, h)) for t in (q, k, G))  # [..., 2, h, K]: the two halves
    r = G2[..., 0, -1:, :].detach()  # [..., 1, K] cumulative decay at the end of the first half
    q_late = q2[..., 1, :, :] * (G2[..., 1, :, :] - r).exp()  # exponents <= 0
    k_early = k2[..., 0, :, :] * (r - G2[..., 0, :, :]).exp()
    cross = q_late @ k_early.transpose(-1, -2)  # [..., h, h]: second half attends to the first
    halves = _intra_per_key(q2, k2, G2)  # [..., 2, h, h]
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
    q, k, v = (rearrange(t, "b (n c) h d -> b h n c d", c=C) for t in (q, k, v))  # [B, H, N, C, d]
    if g is None:
        A = (q @ k.transpose(-1, -2)).tril()
        q_in, k_end, chunk_decay = q, k, None
    else:
        G = rearrange(g, "b (n c) h d -> b h n c d", c=C).cumsum(-2)  # [B, H, N, C, 1 or K]
        A = _intra_per_head(q, k, G) if G.shape[-1] == 1 else _intra_per_key(q, k, G)
        G_end = G[..., -1:, :]  # [B, H, N, 1, 1 or K]
        q_in = q * G.exp()  # queries see the chunk-start state decayed up to them
        k_end = k * (G_end - G).exp()  # keys decayed to the chunk end
        chunk_decay = G_end.transpose(-1, -2).exp()  # [B, H, N, 1 or K, 1]
    dS = k_end.transpose(-1, -2) @ v  # [B, H, N, K, V]: each chunk's own contribution
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state
    starts = []
    for n in range(q.shape[2]):
        starts.append(S)
        S = dS[:, :, n] + (S if chunk_decay is None else chunk_decay[:, :, n] * S)
    o = q_in @ torch.stack(starts, dim=2) + A @ v  # [B, H, N, C, V]
    return rearrange(o, "b h n c v -> b (n c) h v")[:, :T], S


def check_chunk_size(chunk_size: int) -> None:
    """Chunks are powers of two (the per-channel intra-chunk matrix is built by halving)."""
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
