"""Chunked SSD: the minimal chunked algorithm of the Mamba-2 paper (its Listing 1), in matmuls.

With one scalar decay per head, the scan inside a chunk of ``Q`` tokens is a masked attention-like
product ``y = ((C B^T) * Lmask) (dt x)``, where ``Lmask[t, s] = exp(a_{s+1} + ... + a_t)`` for
``s <= t`` (``a = dt A``) and 0 above the diagonal.  The sums are built within the chunk and masked
to ``-inf`` *before* the ``exp`` (:func:`segsum`), so nothing overflows at any length or decay.
Chunks then pass their ``[P, N]`` states along (a loop over chunks on CPU, one matmul on a GPU),
and each position reads the state entering its chunk through ``C``.  Gradients come from autograd.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from .._chunks import pass_states, segsum, use_matmul
from .._dispatch import dispatch, register_impl
from .naive import naive_core
from ._common import Result, check_inputs, run_ssd

CPU_CHUNK_SIZE = 64  # the fastest chunk on CPU; chunk_size only changes speed, not results
RECURRENT_MAX_LEN = 8  # up to this many tokens (streaming steps) the token loop has fewer ops


def chunk_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: Optional[torch.Tensor], chunk_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """All chunks at once (see the module docstring; layouts in :mod:`._common`)."""
    b, l, h, p = x.shape
    g = B.shape[2]
    q = min(chunk_size, l)
    k = -(-l // q)
    if k * q != l:  # pad with dt = 0: decay 1 and input 0 leave the state as it was
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, k * q - l)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, k * q - l))
    n, e = B.shape[-1], h // g
    # heads split as (group, head-in-group e); B and C are shared by the heads of a group
    xdt = rearrange(x * dt[..., None], "b (k q) (g e) p -> b k g e q p", q=q, g=g)
    a = rearrange(dt * A, "b (k q) (g e) -> b k g e q", q=q, g=g)  # log-decays
    B, C = (rearrange(t, "b (k q) g n -> b k g q n", q=q) for t in (B, C))
    a_cum = a.cumsum(-1)  # [B, K, G, E, Q]: log-decay from the chunk start
    L = torch.exp(segsum(a))  # [B, K, G, E, Q, Q]
    # 1. within each chunk, from a zero state
    y = ((C @ B.transpose(-1, -2)).unsqueeze(3) * L) @ xdt  # [B, K, G, E, Q, P]
    # 2. each chunk's own end state: inputs decayed to the chunk end (the last row of L)
    xdt_end = rearrange(xdt * L[..., -1, :, None], "b k g e q p -> b k g q (e p)")
    local = rearrange(xdt_end.transpose(-1, -2) @ B, "b k g (e p) n -> b k g e p n", e=e)
    # 3. states entering the chunks
    state = (x.new_zeros(b, g, e, p, n) if h0 is None
             else rearrange(h0, "b (g e) p n -> b g e p n", g=g))
    entering = pass_states(state, rearrange(local, "b k g e p n -> b g e k p n"),
                           rearrange(a_cum[..., -1], "b k g e -> b g e k"),
                           use_matmul(x, k))  # [B, G, E, K+1, P, N]
    # 4. each position reads the state entering its chunk, decayed to it
    S = rearrange(entering[:, :, :, :-1], "b g e k p n -> b k g n (e p)")
    y_in = rearrange(C @ S, "b k g q (e p) -> b k g e q p", e=e)
    y = y + y_in * torch.exp(a_cum)[..., None]
    y = rearrange(y, "b k g e q p -> b (k q) (g e) p")[:, :l]
    return y, rearrange(entering[:, :, :, -1], "b g e p n -> b (g e) p n")


def short_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: Optional[torch.Tensor], chunk_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A few tokens as one chunk, in broadcast products and sums rather than matmuls: the form
    ``torch.compile`` turns into a couple of fused loops (no ``[L, P, N]`` temporary is kept, no
    per-token state is stored), for compiled streaming and decoding steps.  Eagerly those
    products would be materialised, so the eager path keeps the token loop.

    ``y_t = sum_{s<=t} exp(a_s+1 + .. + a_t) (C_t . B_s) dt_s x_s + exp(a_1 + .. + a_t) h0 C_t`` and
    ``h_L = exp(a_1 + .. + a_L) h0 + sum_s exp(a_s+1 + .. + a_L) dt_s x_s B_s^T`` (``a = dt A``).
    """
    h = x.shape[2]
    B, C = (repeat(t, "b l g n -> b l (g e) n", e=h // t.shape[2]) for t in (B, C))  # [B, L, H, N]
    a = dt * A                                                   # [B, L, H] log-decays
    a_cum = a.cumsum(1)
    xdt = x * dt[..., None]                                      # [B, L, H, P]
    L = torch.exp(segsum(a.transpose(1, 2))).permute(0, 2, 3, 1)  # [B, T, S, H]
    w = L * (C[:, :, None] * B[:, None]).sum(-1)                 # [B, T, S, H]
    y = (w[..., None] * xdt[:, None]).sum(2)                     # [B, T, H, P]
    to_end = torch.exp(a_cum[:, -1:] - a_cum)[..., None] * xdt   # [B, L, H, P]
    state = (to_end[..., None] * B[:, :, :, None, :]).sum(1)     # [B, H, P, N]
    if h0 is not None:
        y = y + torch.exp(a_cum)[..., None] * (h0[:, None] * C[:, :, :, None, :]).sum(-1)
        state = state + torch.exp(a_cum[:, -1])[..., None, None] * h0
    return y, state


@register_impl("mamba_chunk_scan_combined", "chunk")
def chunked_ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                dt_bias: Optional[torch.Tensor] = None, initial_states: Optional[torch.Tensor] = None,
                dt_softplus: bool = False, return_final_states: bool = False,
                reverse: bool = False) -> Result:
    """The chunked implementation behind ``mamba_chunk_scan_combined``.

    On CPU the chunk is capped at :data:`CPU_CHUNK_SIZE` tokens: the intra-chunk work grows with
    the chunk while the loop over chunks is cheap there (at L=4096, 64 runs ~3x faster than 256).
    Sequences of at most :data:`RECURRENT_MAX_LEN` tokens (streaming and decoding steps) take the
    token recurrence, which is fewer operations there (fla's layers switch likewise), or, while
    ``torch.compile`` traces, :func:`short_core` (the same in fused loops: a compiled streaming
    step of ``stream_mamba2_tiny`` with 4 tokens per chunk runs ~11% faster, measured).
    """
    if x.device.type == "cpu":
        chunk_size = min(chunk_size, CPU_CHUNK_SIZE)
    if x.shape[1] > RECURRENT_MAX_LEN:
        core = chunk_core
    else:
        core = short_core if torch.compiler.is_compiling() else naive_core
    return run_ssd(core, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
                   dt_softplus, return_final_states, reverse)


def mamba_chunk_scan_combined(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                              C: torch.Tensor, chunk_size: int, D: Optional[torch.Tensor] = None,
                              z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
                              initial_states: Optional[torch.Tensor] = None, dt_softplus: bool = False,
                              return_final_states: bool = False, reverse: bool = False) -> Result:
    """Mamba-2's SSD scan, chunked; drop-in for ``mamba_ssm``'s ``mamba_chunk_scan_combined``.

    ``dt = softplus(dt + dt_bias)`` (softplus if ``dt_softplus``), per head
    ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T`` (state ``[P, N]``), ``y_t = h_t C_t + D x_t``,
    times ``silu(z_t)`` if ``z`` is given.  Any ``L`` works (padded internally to a multiple of
    ``chunk_size``); state and accumulation are fp32 whatever the input dtype.

    Args:
        x: ``[B, L, H, P]``.  dt: ``[B, L, H]``.  A: ``[H]`` (negative for a decaying state).
        B, C: ``[B, L, G, N]`` with G groups of ``H/G`` heads each.
        chunk_size: tokens per chunk (mamba_ssm uses 256; on CPU at most 64 are used, the fastest
            there); results do not depend on it.
        D: ``[H]`` or ``[H, P]`` skip weights.  z: ``[B, L, H, P]`` gate.  dt_bias: ``[H]``.
        initial_states: fp32 ``[B, H, P, N]`` state before the first token.
        dt_softplus: apply softplus to ``dt + dt_bias``.
        return_final_states: also return the state after the last token.
        reverse: run right-to-left, the op on the flipped sequence with the output flipped back
            (mmeff extension, for bidirectional mixers).

    Returns:
        ``y[B, L, H, P]`` in ``x``'s dtype, or ``(y, final_states[B, H, P, N] fp32)`` if
        ``return_final_states``.
    """
    check_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states)
    return dispatch("mamba_chunk_scan_combined", x.device)(x, dt, A, B, C, chunk_size, D, z, dt_bias,
                                                           initial_states, dt_softplus,
                                                           return_final_states, reverse)
