"""Chunked selective scan: a closed form inside each chunk, in log space, run in cache-sized segments.

Inside a chunk of ``Q`` tokens, with ``D_q = dt_1 + ... + dt_q`` (the chunk's own tokens so far),
the state of every (state ``n``, channel ``e``) pair is

    h_q = P_q (S_q + H),   P_q = 2^(A2 D_q) = exp(A D_q),   S_q = sum_{s<=q} x_s B_s / P_s

(``A2 = A / ln 2``; ``H`` the state entering the chunk): one ``exp2`` per element, a division, a
running sum over the ``Q`` positions (all chunks of a segment at once, one op per position) and
the output ``y_q = C_q h_q`` as one batched matmul.  The factors are exact while
``|A D_q| <= SAFE_SPAN / 2`` (the bound of :mod:`mmeff.ops.gla.chunk`: every factor within
``e^+-60``).  Past that point of a chunk (a pair whose decay is very strong: rare in practice) the
factorised values are wrong and never read: those positions of those (chunk, state, channel)
triples are recomputed exactly by the plain recurrence (gathered, all at once) and written over.
The reference is the chunk start, not the middle of its range, so that an output never depends on
later tokens, not even in rounding; nothing grows with the sequence length either, as exponents
are within-chunk sums only.

The chunks are visited in segments of about ``SEGMENT_SIZE`` elements per ``[Q, N, E]``-sized
temporary so that the temporaries stay in cache; the states entering the chunks of a segment
follow from a loop over its chunks (``H' = 2^(A2 D_Q) H + local end state``).  Long inputs therefore
cost one pass over memory, and the ``[B, D, L, N]`` states are never held.

The backward pass (:class:`_ChunkedScan`) is written out rather than taken from autograd: it runs
the segments right to left, recomputes the states, gets ``g = dL/dh`` from the same closed form on
the reversed recurrence ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}``, and reads every gradient from
``g`` and ``h``: ``dx = sum_n g B``, ``dB = sum_e g x``, ``dC = sum_e h dy`` and, with
``da = g (h - x B)`` the gradient of the log-decay ``a = dt A``, ``d dt = sum_n da A`` and
``dA = sum_t da dt``.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .._dispatch import dispatch, register_impl
from ..gla.chunk import SAFE_SPAN
from ._common import Result, check_inputs, run_selective_scan

CHUNK_SIZE = 8  # measured on CPU (2 threads, T=4096, D=256, N=16): 16 and 32 are slower
SEGMENT_SIZE = 2 ** 19  # elements per [Q, N, E]-sized temporary of a segment (measured best)
LOG2E = 1.0 / math.log(2.0)

Segment = Tuple[int, int, int, int]  # rows b0:b1 (batch x group), chunks k0:k1


def _transpose(t: torch.Tensor) -> torch.Tensor:
    """``[R, X, Y] -> [R, Y, X]`` as 2D copies (torch's blocked transpose: several times faster)."""
    out = t.new_empty(t.shape[0], t.shape[2], t.shape[1])
    for o, s in zip(out, t):
        o.copy_(s.t())
    return out


def _segments(rows: int, chunks: int, unit: int, size: int) -> List[Segment]:
    """Blocks of rows x chunks of about ``size`` elements (``unit`` per row and chunk), row-major."""
    kk = min(chunks, max(1, size // unit))
    bb = max(1, size // (kk * unit))
    return [(b0, min(b0 + bb, rows), k0, min(k0 + kk, chunks))
            for b0 in range(0, rows, bb) for k0 in range(0, chunks, kk)]


class _Fallback(NamedTuple):
    """The (row, chunk, state, channel) triples whose decay gets too strong for the factors, in
    segment order, and their positions from that point on (``M`` triples, ``V`` positions)."""
    bounds: List[int]  # segment i holds triples bounds[i]:bounds[i + 1] ...
    at_bounds: List[int]  # ... and positions at_bounds[i]:at_bounds[i + 1]
    row: torch.Tensor  # [M] row (batch x group) of each triple
    chunk: torch.Tensor  # [M]
    state: torch.Tensor  # [M] state index n
    channel: torch.Tensor  # [M] channel index e
    a: torch.Tensor  # [M, 1] A / ln 2
    cum: torch.Tensor  # [M, Q] cumulative dt within the chunk
    step: torch.Tensor  # [M, Q] per-token decays exp(dt A)
    local: torch.Tensor  # [M, Q] states from a zero start (the recurrence)
    bad: torch.Tensor  # [M, Q] positions past the factors' range
    end_at: torch.Tensor  # [M] flat index in a segment's [bb, kk, N, E] tensors
    at: torch.Tensor  # [V] flat index of each position in a segment's [bb, kk, Q, N, E] tensors
    local_at: torch.Tensor  # [V] its state from a zero start
    enter_at: torch.Tensor  # [V] its decay from the chunk start, exp(A D_q)
    state_at: torch.Tensor  # [V] flat index of its chunk's entering state in [R, K + 1, N, E]
    carry_at: torch.Tensor  # [V] flat index of the state after its chunk in [bb, kk + 1, N, E]


class _Chunks(NamedTuple):
    """The inputs in chunk layout (rows = batch x group, E = channels per group)."""
    x: torch.Tensor  # [R, K, Q, E]
    dt: torch.Tensor  # [R, K, Q, E]
    cum: torch.Tensor  # [R, K, Q, E] cumulative dt within the chunk
    A: torch.Tensor  # [R, N, E]
    A2: torch.Tensor  # [R, N, E] A / ln 2
    B: torch.Tensor  # [R, K, Q, N]
    C: torch.Tensor  # [R, K, Q, N]
    segments: List[Segment]
    fallback: Optional[_Fallback]


def _prepare(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             q: int) -> _Chunks:
    """Chunk layout, and the exact states where the factors cannot be used."""
    b, d, l = x.shape
    g, n = B.shape[1], B.shape[2]
    e, r, k = d // g, b * g, -(-l // q)
    if k * q != l:  # pad with dt = 0: decay 1 and input 0 leave the state as it was
        x, dt, B, C = (F.pad(t, (0, k * q - l)) for t in (x, dt, B, C))
    x_, dt_ = (_transpose(t.reshape(r, e, k * q)).view(r, k, q, e) for t in (x, dt))
    tri = torch.ones(q, q, dtype=x.dtype, device=x.device).tril_()
    cum = torch.matmul(tri, dt_)  # [R, K, Q, E]
    B_, C_ = (rearrange(t.reshape(r, n, k, q), "r n k q -> r k q n").contiguous() for t in (B, C))
    A_ = rearrange(A, "(g e) n -> g n e", g=g).expand(b, g, n, e).reshape(r, n, e).contiguous()
    A2 = A_ * LOG2E
    segments = _segments(r, k, q * n * e, SEGMENT_SIZE)
    fallback = _fallback(A_, A2, x_, dt_, cum, B_, segments)
    return _Chunks(x_, dt_, cum, A_, A2, B_, C_, segments, fallback)


def _fallback(A: torch.Tensor, A2: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
              cum: torch.Tensor, B: torch.Tensor, segments: List[Segment]) -> Optional[_Fallback]:
    """Exact states, by the recurrence over their ``Q`` positions, of the triples where
    ``|A D_q|`` passes ``SAFE_SPAN / 2``; None if there are none."""
    r, k, q, e = x.shape
    n = A.shape[1]
    reach = cum if bool((dt >= 0).all()) else cum.abs().cummax(2).values  # max |D| so far
    absA, limit = A.abs(), SAFE_SPAN / 2
    wide = (reach[:, :, -1] * absA.amax(1)[:, None]) > limit  # [R, K, E]: some state of the channel
    if not bool(wide.any()):
        return None
    ri, ki, ei = wide.nonzero().unbind(1)
    mi, ni = ((absA[ri, :, ei] * reach[ri, ki, -1, ei][:, None]) > limit).nonzero().unbind(1)
    ri, ki, ei = ri[mi], ki[mi], ei[mi]  # sorted by (row, chunk, ...)
    a, cum = A2[ri, ni, ei][:, None], cum[ri, ki, :, ei]  # [M, 1], [M, Q]
    bad = (absA[ri, ni, ei][:, None] * reach[ri, ki, :, ei]) > limit  # [M, Q]
    step = torch.exp2(a * dt[ri, ki, :, ei])
    xb = x[ri, ki, :, ei] * B[ri, ki, :, ni]
    h, local = torch.zeros_like(a[:, 0]), []
    for step_j, xb_j in zip(step.unbind(1), xb.unbind(1)):
        h = torch.addcmul(xb_j, step_j, h)
        local.append(h)
    # where each triple sits in its segment's temporaries (segments: row blocks x chunk blocks)
    kk_full, bb_full = segments[0][3] - segments[0][2], segments[0][1] - segments[0][0]
    sid = (ri // bb_full) * -(-k // kk_full) + ki // kk_full
    seg_r0, seg_k0, seg_kk = (torch.tensor(v, device=x.device)[sid] for v in
                              zip(*[(r0, k0, k1 - k0) for r0, _, k0, k1 in segments]))
    rl, kl = ri - seg_r0, ki - seg_k0  # row and chunk inside the segment
    pos, inner = ni * e + ei, (ri - seg_r0) * seg_kk + kl
    at = (inner[:, None] * q + torch.arange(q, device=x.device)) * (n * e) + pos[:, None]
    local = torch.stack(local, 1)
    t = bad.nonzero()[:, 0]  # [V] the triple of each position, in triple order
    edges = torch.arange(len(segments) + 1, device=x.device)
    return _Fallback(torch.searchsorted(sid, edges).tolist(), torch.searchsorted(sid[t], edges).tolist(),
                     ri, ki, ni, ei, a, cum, step, local, bad, inner * (n * e) + pos, at[bad], local[bad],
                     torch.exp2(a * cum)[bad], ((ri * (k + 1) + ki) * (n * e) + pos)[t],
                     ((rl * (seg_kk + 1) + kl + 1) * (n * e) + pos)[t])


def _chunk_states(c: _Chunks, seg: Segment, P: torch.Tensor, S: torch.Tensor,
                  decay: torch.Tensor) -> torch.Tensor:
    """Fill ``P = 2^(A2 D)``, ``S`` (the running sum from a zero start) and the whole-chunk
    decays ``[bb, kk, N, E]`` of one segment."""
    b0, b1, k0, k1 = seg
    A2 = c.A2[b0:b1, None]  # [bb, 1, N, E]
    torch.mul(c.cum[b0:b1, k0:k1, -1, None], A2, out=decay).exp2_()
    torch.mul(c.cum[b0:b1, k0:k1, :, None], A2[:, None], out=P).exp2_()
    torch.div(c.x[b0:b1, k0:k1, :, None], P, out=S)
    S_j, B_j = S.unbind(2), c.B[b0:b1, k0:k1, :, :, None].unbind(2)
    S_j[0].mul_(B_j[0])
    for j in range(1, len(S_j)):  # one op per position, all chunks of the segment at once
        torch.addcmul(S_j[j - 1], S_j[j], B_j[j], out=S_j[j])
    return decay


def _positions(fb: Optional[_Fallback], si: int) -> Tuple[Optional[slice], Optional[slice]]:
    """Segment ``si``'s slices of the fallback triples and positions (None if it has none)."""
    if fb is None or fb.bounds[si + 1] == fb.bounds[si]:
        return None, None
    return slice(fb.bounds[si], fb.bounds[si + 1]), slice(fb.at_bounds[si], fb.at_bounds[si + 1])


def _states(c: _Chunks, seg: Segment, si: int, P: torch.Tensor, S: torch.Tensor,
            H: torch.Tensor) -> torch.Tensor:
    """Turn ``S`` into the states ``h`` of the segment (``H`` [R, K + 1, N, E] entering states)."""
    b0, b1, k0, k1 = seg
    S.add_(H[b0:b1, k0:k1, None]).mul_(P)
    fb, (m, v) = c.fallback, _positions(c.fallback, si)
    if v is not None:
        S.view(-1)[fb.at[v]] = torch.addcmul(fb.local_at[v], fb.enter_at[v], H.view(-1)[fb.state_at[v]])
    return S


def _buffers(c: _Chunks, count: int) -> List[torch.Tensor]:
    """``count`` flat buffers of the largest segment's ``[bb, kk, Q, N, E]`` size, plus one for
    its ``[bb, kk, N, E]`` decays."""
    _, _, q, e = c.x.shape
    n = c.A.shape[1]
    big = max((b1 - b0) * (k1 - k0) for b0, b1, k0, k1 in c.segments)
    return [c.x.new_empty(big * q * n * e) for _ in range(count)] + [c.x.new_empty(big * n * e)]


def _views(flat: List[torch.Tensor], seg: Segment, q: int, n: int, e: int) -> List[torch.Tensor]:
    b0, b1, k0, k1 = seg
    bb, kk = b1 - b0, k1 - k0
    *full, ends = flat
    return [t[:bb * kk * q * n * e].view(bb, kk, q, n, e) for t in full] + [ends[:bb * kk * n * e].view(bb, kk, n, e)]


def _forward(c: _Chunks, h0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Outputs ``[R, K, Q, 1, E]`` and the states entering every chunk ``[R, K + 1, N, E]`` (the
    last one is the final state), from ``h0`` (``[R, N, E]`` or 0)."""
    r, k, q, e = c.x.shape
    n = c.A.shape[1]
    H = c.x.new_empty(r, k + 1, n, e)
    H[:, 0] = h0
    y = c.x.new_empty(r, k, q, 1, e)
    flat, fb = _buffers(c, 2), c.fallback
    for si, seg in enumerate(c.segments):
        b0, b1, k0, k1 = seg
        P, S, decay = _views(flat, seg, q, n, e)
        _chunk_states(c, seg, P, S, decay)
        local = P[:, :, -1] * S[:, :, -1]  # [bb, kk, N, E] each chunk's end state from zero
        m, _ = _positions(fb, si)
        if m is not None:  # the last position of a fallback triple is always past the range
            local.view(-1)[fb.end_at[m]] = fb.local[m, -1]
        H_i = H[b0:b1, k0:k1 + 1].unbind(1)
        for i, (local_i, decay_i) in enumerate(zip(local.unbind(1), decay.unbind(1))):
            torch.addcmul(local_i, decay_i, H_i[i], out=H_i[i + 1])
        h = _states(c, seg, si, P, S, H)
        torch.matmul(c.C[b0:b1, k0:k1, :, None], h, out=y[b0:b1, k0:k1])
    return y, H


def _backward(c: _Chunks, H: torch.Tensor, dy: torch.Tensor, dlast: torch.Tensor):
    """Gradients of ``(x, dt, A, B, C, h0)`` in chunk layout from ``dy`` ``[R, K, Q, E]`` and the
    final state's gradient ``dlast`` ``[R, N, E]``."""
    r, k, q, e = c.x.shape
    n = c.A.shape[1]
    dx, ddt = c.x.new_empty(r, k, q, 1, e), c.x.new_empty(r, k, q, e)
    dB, dC = c.x.new_empty(r, k, q, n, 1), c.x.new_empty(r, k, q, n, 1)
    dA = c.x.new_zeros(r, n, e)
    carry = dlast.clone()  # [R, N, E] gradient flowing into the state before the current segment
    fb = c.fallback
    if fb is not None:  # dL/dh of the fallback triples from a zero carry: the reversed recurrence
        c_dy = dy[fb.row, fb.chunk, :, fb.channel] * c.C[fb.row, fb.chunk, :, fb.state]  # [M, Q]
        g, fb_g = c_dy[:, -1], [c_dy[:, -1]]
        for j in range(q - 2, -1, -1):
            g = torch.addcmul(c_dy[:, j], fb.step[:, j + 1], g)
            fb_g.append(g)
        fb_g = torch.stack(fb_g[::-1], 1)  # [M, Q]
        fb_exit = torch.exp2(fb.a * (fb.cum[:, -1:] - fb.cum))  # decay from q to the chunk end
        fb_g_bad, fb_exit_bad = fb_g[fb.bad], fb_exit[fb.bad]
    flat = _buffers(c, 3)
    for si in range(len(c.segments) - 1, -1, -1):
        seg = c.segments[si]
        b0, b1, k0, k1 = seg
        bb, kk = b1 - b0, k1 - k0
        P, S, G, decay = _views(flat, seg, q, n, e)
        _chunk_states(c, seg, P, S, decay)
        # dL/dh = (R + P_end carry) / P with R the reversed running sum of P C dy
        torch.mul(dy[b0:b1, k0:k1, :, None], c.C[b0:b1, k0:k1, :, :, None], out=G).mul_(P)
        G_j = G.unbind(2)
        for j in range(q - 2, -1, -1):
            G_j[j].add_(G_j[j + 1])
        back = G[:, :, 0].clone()  # [bb, kk, N, E] what each chunk passes to the one before
        m, v = _positions(fb, si)
        if m is not None:
            back.view(-1)[fb.end_at[m]] = fb.step[m, 0] * fb_g[m, 0]
        carries = c.x.new_empty(bb, kk + 1, n, e)
        carries[:, kk] = carry[b0:b1]
        C_i = carries.unbind(1)
        for i in range(kk - 1, -1, -1):
            torch.addcmul(back[:, i], decay[:, i], C_i[i + 1], out=C_i[i])
        carry[b0:b1] = C_i[0]
        G.addcmul_(P[:, :, -1:], carries[:, 1:, None]).div_(P)
        if v is not None:
            after = carries.view(-1)[fb.carry_at[v]]
            G.view(-1)[fb.at[v]] = torch.addcmul(fb_g_bad[v], fb_exit_bad[v], after)
        h = _states(c, seg, si, P, S, H)
        x_s, B_s = c.x[b0:b1, k0:k1], c.B[b0:b1, k0:k1]
        torch.matmul(B_s[:, :, :, None], G, out=dx[b0:b1, k0:k1])
        torch.matmul(G, x_s[..., None], out=dB[b0:b1, k0:k1])
        torch.matmul(h, dy[b0:b1, k0:k1, :, :, None], out=dC[b0:b1, k0:k1])
        da = h.addcmul_(x_s[:, :, :, None], B_s[..., None], value=-1).mul_(G)  # dL/d(dt A)
        dA[b0:b1] += torch.mul(da, c.dt[b0:b1, k0:k1, :, None], out=P).sum((1, 2))
        torch.sum(da.mul_(c.A[b0:b1, None, None]), 3, out=ddt[b0:b1, k0:k1])
    return dx, ddt, dA, dB, dC, carry


def _to_rows(t: torch.Tensor, g: int, q: int) -> torch.Tensor:
    """``[B, D, L] -> [B*G, K, Q, E]`` (padded)."""
    b, d, l = t.shape
    k = -(-l // q)
    t = F.pad(t, (0, k * q - l)) if k * q != l else t
    return _transpose(t.reshape(b * g, d // g, k * q)).view(b * g, k, q, d // g)


def _from_rows(t: torch.Tensor, b: int, l: int) -> torch.Tensor:
    """``[B*G, K, Q, E] -> [B, D, L]``."""
    r, k, q, e = t.shape
    return _transpose(t.reshape(r, k * q, e)).view(b, r // b * e, k * q)[..., :l]


class _ChunkedScan(torch.autograd.Function):
    """The chunked core with its written-out backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, q: int):
        b, d, l = x.shape
        g, n = B.shape[1], B.shape[2]
        c = _prepare(x, dt, A, B, C, q)
        y, H = _forward(c, 0 if h0 is None else rearrange(h0, "b (g e) n -> (b g) n e", g=g))
        ctx.c, ctx.dims, ctx.has_h0 = c, (b, g, l), h0 is not None
        ctx.save_for_backward(H)
        last = rearrange(H[:, -1], "(b g) n e -> b (g e) n", b=b).clone(memory_format=torch.contiguous_format)
        return _from_rows(y.squeeze(3), b, l), last

    @staticmethod
    def backward(ctx, dy, dlast):
        (H,), c, (b, g, l) = ctx.saved_tensors, ctx.c, ctx.dims
        r, k, q, e = c.x.shape
        n = c.A.shape[1]
        dy = torch.zeros_like(c.x) if dy is None else _to_rows(dy.float(), g, q)
        dlast = (c.x.new_zeros(r, n, e) if dlast is None
                 else rearrange(dlast.float(), "b (g e) n -> (b g) n e", g=g))
        dx, ddt, dA, dB, dC, dh0 = _backward(c, H, dy, dlast)
        dA = rearrange(dA.view(b, g, n, e).sum(0), "g n e -> (g e) n")
        dB, dC = (rearrange(t, "(b g) k q n 1 -> b g n (k q)", b=b)[..., :l] for t in (dB, dC))
        dh0 = rearrange(dh0, "(b g) n e -> b (g e) n", b=b) if ctx.has_h0 else None
        return _from_rows(dx.squeeze(3), b, l), _from_rows(ddt, b, l), dA, dB, dC, dh0, None


def chunk_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: Optional[torch.Tensor], chunk_size: Optional[int] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The chunked core (see the module docstring; layouts in :mod:`._common`)."""
    q = min(chunk_size or CHUNK_SIZE, x.shape[-1])
    return _ChunkedScan.apply(x, dt, A, B, C, h0, q)


@register_impl("selective_scan_fn", "chunk")
def chunked_selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: Optional[torch.Tensor] = None,
                           z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                           delta_softplus: bool = False, return_last_state: bool = False,
                           initial_state: Optional[torch.Tensor] = None, reverse: bool = False,
                           chunk_size: Optional[int] = None) -> Result:
    """The chunked implementation behind ``selective_scan_fn`` (``chunk_size`` exposed; None
    means ``CHUNK_SIZE``)."""
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
