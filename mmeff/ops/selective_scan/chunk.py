"""Chunked selective scan: the sequence cut into chunks that all advance together.

The decay ``exp(dt_t A)`` differs per channel *and* state index, so the scan has no matmul form
that stays finite under strong decay (``exp`` of within-chunk differences would need a
``[Q, Q, N]`` tensor per channel).  Instead every chunk runs the recurrence at once, position by
position, and only products of per-step decays (all <= 1) are ever formed:

1. each chunk from a zero state: its local end state (a sweep over the ``Q`` positions, batched
   over all chunks);
2. the states entering the chunks: ``H_{k+1} = exp(A sum_k dt) H_k + local_k`` (a loop over chunks);
3. each chunk again from its true entering state, reading ``y_t = C_t h_t`` on the way.

With ``Q ~ sqrt(L)`` that is ``~3 sqrt(L)`` batched steps instead of ``L`` (64 + 64 + 64 at
L=4096), without autograd nothing is held at ``[B, D, L, N]`` size, and nothing overflows at any
length.  Gradients come from autograd through these steps.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .._dispatch import dispatch, register_impl
from ._common import Result, check_inputs, run_selective_scan


def auto_chunk_size(length: int) -> int:
    """The power of two nearest ``sqrt(length)``: balances positions per chunk and chunks."""
    return 2 ** round(math.log2(max(length, 1)) / 2)


def chunk_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: Optional[torch.Tensor], chunk_size: Optional[int] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """All chunks at once (see the module docstring; layouts in :mod:`._common`)."""
    b, d, l = x.shape
    g, n = B.shape[1], B.shape[2]
    q = chunk_size or auto_chunk_size(l)
    k = -(-l // q)
    if k * q != l:  # pad with dt = 0: decay 1 and input 0 leave the state as it was
        x, dt, B, C = (F.pad(t, (0, k * q - l)) for t in (x, dt, B, C))
    # position j of every chunk at once; channels split as (group, channel-in-group e)
    x_, dt_ = (rearrange(t, "b (g e) (k q) -> q b k g 1 e", g=g, q=q).contiguous() for t in (x, dt))
    B_ = rearrange(B, "b g n (k q) -> q b k g n 1", q=q).contiguous()
    C_ = rearrange(C, "b g n (k q) -> q b k g 1 n", q=q).contiguous()
    A_ = rearrange(A, "(g e) n -> g n e", g=g)

    # autograd holds every per-step decay anyway: then compute each once, else recompute it
    # (cheaper than holding [B, D, L, N] of them)
    keep, decays = torch.is_grad_enabled() and (dt.requires_grad or A.requires_grad), {}

    def advance(h: torch.Tensor, j: int) -> torch.Tensor:  # h: [B, K, G, N, E]
        dA = decays[j] if j in decays else torch.exp(dt_[j] * A_)
        if keep:
            decays[j] = dA
        return (dA * h).addcmul_(x_[j], B_[j])

    state = x.new_zeros(b, g, n, d // g) if h0 is None else rearrange(h0, "b (g e) n -> b g n e", g=g)
    entering = [state]
    if k > 1:
        # 1. local end state of every chunk
        h = x.new_zeros(b, k, g, n, d // g)
        for j in range(q):
            h = advance(h, j)
        # 2. entering states, chunk after chunk
        decay = torch.exp(dt_.sum(0) * A_)  # [B, K, G, N, E]: whole-chunk decay
        for i in range(k - 1):
            entering.append(torch.addcmul(h[:, i], decay[:, i], entering[-1]))
    # 3. the chunks again from their entering states, reading the output
    h, ys = torch.stack(entering, dim=1), []
    for j in range(q):
        h = advance(h, j)
        ys.append(C_[j] @ h)  # [B, K, G, 1, E]
    y = rearrange(torch.stack(ys), "q b k g 1 e -> b (g e) (k q)")[..., :l]
    return y, rearrange(h[:, -1], "b g n e -> b (g e) n")


@register_impl("selective_scan_fn", "chunk")
def chunked_selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: Optional[torch.Tensor] = None,
                           z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                           delta_softplus: bool = False, return_last_state: bool = False,
                           initial_state: Optional[torch.Tensor] = None, reverse: bool = False,
                           chunk_size: Optional[int] = None) -> Result:
    """The chunked implementation behind ``selective_scan_fn`` (``chunk_size`` exposed; None picks
    the power of two nearest ``sqrt(L)``)."""
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return run_selective_scan(chunk_core, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                              return_last_state, initial_state, reverse, chunk_size=chunk_size)


def selective_scan_fn(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                      delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                      return_last_state: bool = False, initial_state: Optional[torch.Tensor] = None,
                      reverse: bool = False) -> Result:
    """Mamba-1's selective scan (S6); drop-in for ``mamba_ssm``'s ``selective_scan_fn``.

    ``dt = softplus(delta + delta_bias)`` (softplus if ``delta_softplus``),
    ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t``, ``out_t = C_t h_t + D u_t``, times ``silu(z_t)``
    if ``z`` is given.  State and accumulation are fp32 whatever the input dtype.

    Args:
        u, delta: ``[B, D, L]``.
        A: ``[D, N]`` (real; negative for a decaying state).
        B, C: ``[B, N, L]``, or ``[B, G, N, L]`` with G groups of ``D/G`` channels each.
        D: ``[D]`` skip weights.  z: ``[B, D, L]`` gate.  delta_bias: ``[D]``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the state after the last token.
        initial_state: fp32 ``[B, D, N]`` state before the first token (mmeff extension: lets a
            long sequence be scanned in chunks, e.g. for streaming).
        reverse: run right-to-left, the op on the flipped sequence with the output flipped back
            (mmeff extension, for bidirectional mixers); the last state is then the one after
            the first token.

    Returns:
        ``out[B, D, L]`` in ``u``'s dtype, or ``(out, last_state[B, D, N] fp32)`` if
        ``return_last_state``.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return dispatch("selective_scan_fn", u.device)(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                   return_last_state, initial_state, reverse)
