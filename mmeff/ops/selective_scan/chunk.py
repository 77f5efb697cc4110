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
temporary so that the temporaries stay in cache (measured: 2^19 beats 2^18 and 2^20 on 2 threads);
the states entering the chunks of a segment follow from a loop over its chunks
(``H' = 2^(A2 D_Q) H + local end state``).  ``x`` and the cumulative ``dt`` are brought to the
channel-innermost chunk layout once per call (a matmul with the identity / the lower triangle per
batch row, which transposes on the way), and the output goes back to the input's layout by one
permuted copy: only input-sized temporaries exist besides the segment's, and the ``[B, D, L, N]``
states are never held.  Every op runs on all chunks of a segment at once; what costs is the
number of passes over the ``[Q, N, E]`` tensors (seven) and the ``exp2``.

That is the CPU form.  On a GPU, where each of those short chunks would cost launches,
:func:`sweep_core` runs instead: ``sqrt(L)``-long chunks advanced position by position, all chunks
at once, gradients by autograd.

The backward pass (:class:`_ChunkedScan`) is written out rather than taken from autograd: from the
state entering each segment (kept by the forward) it runs the segments right to left, recomputes
the states, gets ``g = dL/dh`` from the same closed form on the reversed recurrence
``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}``, and reads every gradient from ``g`` and ``h``:
``dx = sum_n g B``, ``dB = sum_e g x``, ``dC = sum_e h dy`` and, with
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

CHUNK_SIZE = 8  # measured on CPU (2 threads, T=4096 and 16384, D=256, N=16): 16 ties or loses, 32 loses
SEGMENT_SIZE = 2 ** 19  # elements per [Q, N, E]-sized temporary of a segment (measured best)
LOG2E = 1.0 / math.log(2.0)

Segment = Tuple[int, int, int, int]  # rows b0:b1 (batch x group), chunks k0:k1


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
    state_at: torch.Tensor  # [V] flat index of its chunk's entering state in [bb, kk + 1, N, E]


class _Chunks(NamedTuple):
    """The inputs split into rows (batch x group) and chunks; E = channels per group."""
    x: torch.Tensor  # [R, K, Q, E] (a view of the input's own layout [R, E, K, Q])
    dt: torch.Tensor  # [R, K, Q, E] (the same)
    x5: torch.Tensor  # [R, K, Q, 1, E] x in the chunk layout (contiguous)
    cum5: torch.Tensor  # [R, K, Q, 1, E] cumulative dt within each chunk (contiguous)
    A: torch.Tensor  # [R, 1, 1, N, E]
    A2: torch.Tensor  # [R, 1, 1, N, E] A / ln 2
    B: torch.Tensor  # [R, K, Q, N, 1]
    C: torch.Tensor  # [R, K, Q, 1, N]
    eye: torch.Tensor  # [Q, Q]
    segments: List[Segment]
    fallback: Optional[_Fallback]


def _pad(t: torch.Tensor, q: int) -> torch.Tensor:
    """Pad the last (time) axis to whole chunks: dt = 0 is decay 1 and input 0 (the state holds)."""
    return F.pad(t, (0, -t.shape[-1] % q)) if t.shape[-1] % q else t


def _prepare(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             q: int) -> _Chunks:
    """Chunk layout, and the exact states where the factors cannot be used."""
    b, d, l = x.shape
    g, n = B.shape[1], B.shape[2]
    e, r, k = d // g, b * g, -(-l // q)
    x, dt = (_pad(t, q).view(r, e, k, q) for t in (x, dt))
    B4 = _pad(B, q).reshape(r, n, k, q)
    B_, C_ = (rearrange(t, "r n k q -> r k q n").contiguous() for t in (B4, _pad(C, q).reshape(r, n, k, q)))
    A_ = rearrange(A, "(g e) n -> g n e", g=g).expand(b, g, n, e).reshape(r, n, e).contiguous()
    A2 = A_ * LOG2E
    eye = torch.eye(q, dtype=x.dtype, device=x.device)
    segments = _segments(r, k, q * n * e, SEGMENT_SIZE)
    rows = "r e k q -> r k q e"
    x_, dt_ = rearrange(x, rows), rearrange(dt, rows)
    x5, cum5 = (_to_chunks(t, m)[..., None, :] for t, m in ((x_, eye), (dt_, torch.ones_like(eye).tril_())))
    return _Chunks(x_, dt_, x5, cum5, A_[:, None, None], A2[:, None, None], B_[..., None],
                   C_[:, :, :, None], eye, segments, _fallback(A_, A2, x, dt, B4, segments))


def _fallback(A: torch.Tensor, A2: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, B: torch.Tensor,
              segments: List[Segment]) -> Optional[_Fallback]:
    """Exact states, by the recurrence over their ``Q`` positions, of the triples where
    ``|A D_q|`` passes ``SAFE_SPAN / 2``; None if there are none (``x``, ``dt`` ``[R, E, K, Q]``,
    ``B`` ``[R, N, K, Q]``)."""
    r, e, k, q = x.shape
    n = A.shape[1]
    nonneg = bool(dt.min() >= 0)
    reach = dt @ dt.new_ones(q) if nonneg else dt.cumsum(-1).abs().amax(-1)  # [R, E, K] max |D| in a chunk
    absA, limit = A.abs(), SAFE_SPAN / 2
    wide = (reach * absA.amax(1)[:, :, None]) > limit  # [R, E, K]: some state of the channel
    if not bool(wide.any()):
        return None
    ri, ki, ei = wide.transpose(1, 2).nonzero().unbind(1)  # in (row, chunk) order
    mi, ni = ((absA[ri, :, ei] * reach[ri, ei, ki][:, None]) > limit).nonzero().unbind(1)
    ri, ki, ei = ri[mi], ki[mi], ei[mi]
    a, dt_m = A2[ri, ni, ei][:, None], dt[ri, ei, ki]  # [M, 1], [M, Q]
    cum = dt_m.cumsum(1)
    bad = (absA[ri, ni, ei][:, None] * (cum if nonneg else cum.abs().cummax(1).values)) > limit
    step = torch.exp2(a * dt_m)
    h, local = torch.zeros_like(a[:, 0]), []
    for step_j, xb_j in zip(step.unbind(1), (x[ri, ei, ki] * B[ri, ni, ki]).unbind(1)):
        h = torch.addcmul(xb_j, step_j, h)
        local.append(h)
    local = torch.stack(local, 1)
    # where each triple sits in its segment's temporaries (segments: row blocks x chunk blocks)
    kk_full, bb_full = segments[0][3] - segments[0][2], segments[0][1] - segments[0][0]
    sid = (ri // bb_full) * -(-k // kk_full) + ki // kk_full
    seg_r0, seg_k0, seg_kk = (torch.tensor(v, device=x.device)[sid] for v in
                              zip(*[(r0, k0, k1 - k0) for r0, _, k0, k1 in segments]))
    rl, kl, pos = ri - seg_r0, ki - seg_k0, ni * e + ei  # row and chunk inside the segment
    inner = rl * seg_kk + kl
    at = (inner[:, None] * q + torch.arange(q, device=x.device)) * (n * e) + pos[:, None]
    t = bad.nonzero()[:, 0]  # [V] the triple of each position, in triple order
    edges = torch.arange(len(segments) + 1, device=x.device)
    return _Fallback(torch.searchsorted(sid, edges).tolist(), torch.searchsorted(sid[t], edges).tolist(),
                     ri, ki, ni, ei, a, cum, step, local, bad, inner * (n * e) + pos, at[bad], local[bad],
                     torch.exp2(a * cum)[bad], ((rl * (seg_kk + 1) + kl) * (n * e) + pos)[t])


def _positions(fb: Optional[_Fallback], si: int) -> Tuple[Optional[slice], Optional[slice]]:
    """Segment ``si``'s slices of the fallback triples and positions (None if it has none)."""
    if fb is None or fb.bounds[si + 1] == fb.bounds[si]:
        return None, None
    return slice(fb.bounds[si], fb.bounds[si + 1]), slice(fb.at_bounds[si], fb.at_bounds[si + 1])


def _to_chunks(t: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """``mat @ t`` over each chunk of ``t`` (``[R, K, Q, E]``, a view of the ``[R, E, K, Q]``
    layout), contiguous: the matmul transposes on the way, faster than a copy; one call per row."""
    out = t.new_empty(t.shape)
    for i in range(t.shape[0]):
        torch.matmul(mat, t[i], out=out[i])
    return out


def _from_chunks(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``[R, K, Q, 1, E]`` back to the input's layout ``[R, E, K, Q]``."""
    return t[..., 0, :].permute(0, 3, 1, 2).contiguous()


class _Views(NamedTuple):
    """One segment shape's views of the work buffers (``bb`` rows, ``kk`` chunks)."""
    P: torch.Tensor  # [bb, kk, Q, N, E] 2^(A2 D)
    S: torch.Tensor  # [bb, kk, Q, N, E] running sums, then the states h
    G: Optional[torch.Tensor]  # [bb, kk, Q, N, E] (backward) dL/dh
    B: torch.Tensor  # [bb, kk, Q, N, 1] the segment's B
    local: torch.Tensor  # [bb, kk, N, E] each chunk's end state from zero
    H: torch.Tensor  # [bb, kk + 1, N, E] states entering the chunks (and leaving the last)
    decay: torch.Tensor  # [bb, kk, N, E] P's last row: the whole-chunk decays
    enter: torch.Tensor  # [bb, kk, 1, N, E] H's states entering the chunks
    S_j: Tuple[torch.Tensor, ...]  # S, B, G by position; H, P's last row and local by chunk
    B_j: Tuple[torch.Tensor, ...]
    G_j: Tuple[torch.Tensor, ...]
    H_i: Tuple[torch.Tensor, ...]
    decay_i: Tuple[torch.Tensor, ...]
    local_i: Tuple[torch.Tensor, ...]


class _Work:
    """A segment's temporaries: flat buffers for the largest segment, and their views made once
    per segment shape (making a view costs about as much as a small op)."""

    def __init__(self, c: _Chunks, backward: bool):
        _, _, self.q, self.e = c.x.shape
        self.n, self.backward = c.A.shape[3], backward
        big = max((b1 - b0) * (k1 - k0) for b0, b1, k0, k1 in c.segments)
        full, states = big * self.q * self.n * self.e, big * self.n * self.e
        sizes = (full, full, full if backward else 0, big * self.q * self.n, states,
                 states + c.segments[0][1] * self.n * self.e)
        self.flat = [c.x.new_empty(s) for s in sizes]
        self.cache = {}

    def views(self, seg: Segment) -> _Views:
        bb, kk = seg[1] - seg[0], seg[3] - seg[2]
        if (bb, kk) not in self.cache:
            q, n, e = self.q, self.n, self.e
            shapes = [(bb, kk, q, n, e)] * 3 + [(bb, kk, q, n, 1), (bb, kk, n, e), (bb, kk + 1, n, e)]
            P, S, G, B, local, H = (f[:math.prod(s)].view(s) if f.numel() else None
                                    for f, s in zip(self.flat, shapes))
            self.cache[bb, kk] = _Views(P, S, G, B, local, H, P[:, :, -1], H[:, :-1, None], S.unbind(2),
                                        B.unbind(2), G.unbind(2) if self.backward else (), H.unbind(1),
                                        P[:, :, -1].unbind(1), local.unbind(1))
        return self.cache[bb, kk]


def _segment(c: _Chunks, si: int, w: _Views, start: torch.Tensor) -> None:
    """The states of segment ``si`` into ``w.S`` from the state ``start`` ``[bb, N, E]`` entering
    it (``w.H``: the states entering its chunks)."""
    b0, b1, k0, k1 = c.segments[si]
    fb, (m, v) = c.fallback, _positions(c.fallback, si)
    P, S, H = w.P, w.S, w.H
    torch.mul(c.cum5[b0:b1, k0:k1], c.A2[b0:b1], out=P).exp2_()
    torch.div(c.x5[b0:b1, k0:k1], P, out=S)
    w.B.copy_(c.B[b0:b1, k0:k1])
    S_j, B_j = w.S_j, w.B_j
    S_j[0].mul_(B_j[0])
    for j in range(1, len(S_j)):  # one op per position, all chunks of the segment at once
        torch.addcmul(S_j[j - 1], S_j[j], B_j[j], out=S_j[j])
    torch.mul(w.decay, S_j[-1], out=w.local)
    if m is not None:  # the last position of a fallback triple is always past the range
        w.local.view(-1)[fb.end_at[m]] = fb.local[m, -1]
    H_i = w.H_i
    H_i[0].copy_(start)
    for i, (local_i, decay_i) in enumerate(zip(w.local_i, w.decay_i)):
        torch.addcmul(local_i, decay_i, H_i[i], out=H_i[i + 1])
    S.add_(w.enter).mul_(P)
    if v is not None:
        S.view(-1)[fb.at[v]] = torch.addcmul(fb.local_at[v], fb.enter_at[v], H.view(-1)[fb.state_at[v]])


def _forward(c: _Chunks, h0: torch.Tensor, keep: bool
             ) -> Tuple[torch.Tensor, List[torch.Tensor], torch.Tensor]:
    """Outputs ``[R, E, K, Q]``, the state entering each segment (if ``keep``, for the backward)
    and the final state ``[R, N, E]``, from ``h0`` ``[R, N, E]``."""
    y, work, starts, state = torch.empty_like(c.x5), _Work(c, False), [], h0.clone()
    for si, seg in enumerate(c.segments):
        b0, b1, k0, k1 = seg
        w = work.views(seg)
        if keep:
            starts.append(state[b0:b1].clone())
        _segment(c, si, w, state[b0:b1])
        state[b0:b1] = w.H[:, -1]
        torch.matmul(c.C[b0:b1, k0:k1], w.S, out=y[b0:b1, k0:k1])
    return _from_chunks(y), starts, state


def _backward(c: _Chunks, starts: List[torch.Tensor], dy: torch.Tensor, dlast: torch.Tensor):
    """Gradients of ``(x, dt, A, B, C, h0)``: ``dx``, ``d dt`` ``[R, E, K, Q]``, ``dA``
    ``[R, N, E]``, ``dB``, ``dC`` ``[R, K, Q, N]`` and ``dh0`` ``[R, N, E]``, from ``dy``
    ``[R, K, Q, E]`` (a view of the ``[R, E, K, Q]`` layout) and the final state's gradient
    ``dlast`` ``[R, N, E]``."""
    r, k, q, e = c.x.shape
    n = c.A.shape[3]
    fb = c.fallback
    if fb is not None:  # dL/dh of the fallback triples from a zero carry: the reversed recurrence
        c_dy = dy[fb.row, fb.chunk, :, fb.channel] * c.C[fb.row, fb.chunk, :, 0, fb.state]  # [M, Q]
        g, fb_g = c_dy[:, -1], [c_dy[:, -1]]
        for j in range(q - 2, -1, -1):
            g = torch.addcmul(c_dy[:, j], fb.step[:, j + 1], g)
            fb_g.append(g)
        fb_g = torch.stack(fb_g[::-1], 1)  # [M, Q]
        fb_g_bad = fb_g[fb.bad]
        fb_exit_bad = torch.exp2(fb.a * (fb.cum[:, -1:] - fb.cum))[fb.bad]  # decay to the chunk end
    dy5, dt5 = (_to_chunks(t, c.eye)[..., None, :] for t in (dy, c.dt))
    dx, ddt = torch.empty_like(c.x5), torch.empty_like(c.x5)
    dB, dC = c.x.new_empty(r, k, q, 1, n), c.x.new_empty(r, k, q, 1, n)
    dA, carry, work = c.x.new_zeros(r, n, e), dlast.clone(), _Work(c, True)
    for si in range(len(c.segments) - 1, -1, -1):
        b0, b1, k0, k1 = seg = c.segments[si]
        w = work.views(seg)
        P, G, H, G_j, H_i = w.P, w.G, w.H, w.G_j, w.H_i
        x5, dy5_, dt5_ = c.x5[b0:b1, k0:k1], dy5[b0:b1, k0:k1], dt5[b0:b1, k0:k1]
        _segment(c, si, w, starts[si])
        h, m, v = w.S, *_positions(fb, si)
        # dL/dh = (R + P_end carry) / P with R the reversed running sum of P C dy
        torch.mul(dy5_, c.C[b0:b1, k0:k1].transpose(-1, -2), out=G).mul_(P)
        for j in range(q - 2, -1, -1):
            G_j[j].add_(G_j[j + 1])
        torch.matmul(dy5_, h.transpose(-1, -2), out=dC[b0:b1, k0:k1])  # (row @ h^T: fast)
        w.local.copy_(G_j[0])  # what each chunk passes to the one before
        if m is not None:
            w.local.view(-1)[fb.end_at[m]] = fb.step[m, 0] * fb_g[m, 0]
        H_i[-1].copy_(carry[b0:b1])  # H now holds the gradients flowing into each chunk from the right
        for i in range(k1 - k0 - 1, -1, -1):
            torch.addcmul(w.local_i[i], w.decay_i[i], H_i[i + 1], out=H_i[i])
        carry[b0:b1] = H_i[0]
        G.addcmul_(w.decay[:, :, None], H[:, 1:, None]).div_(P)
        if v is not None:  # the state after a chunk sits one chunk (N E) after the one entering it
            after = H.view(-1)[fb.state_at[v] + n * e]
            G.view(-1)[fb.at[v]] = torch.addcmul(fb_g_bad[v], fb_exit_bad[v], after)
        torch.matmul(w.B.transpose(-1, -2), G, out=dx[b0:b1, k0:k1])
        torch.matmul(x5, G.transpose(-1, -2), out=dB[b0:b1, k0:k1])
        da = h.addcmul_(x5, w.B, value=-1).mul_(G)  # dL/d(dt A)
        dA[b0:b1] += torch.mul(da, dt5_, out=P).sum((1, 2))
        torch.sum(da.mul_(c.A[b0:b1]), 3, keepdim=True, out=ddt[b0:b1, k0:k1])
    return _from_chunks(dx), _from_chunks(ddt), dA, dB.squeeze(3), dC.squeeze(3), carry


class _ChunkedScan(torch.autograd.Function):
    """The chunked core with its written-out backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, q: int):
        b, d, l = x.shape
        g, n = B.shape[1], B.shape[2]
        c = _prepare(x, dt, A, B, C, q)
        h0_ = x.new_zeros(b * g, n, d // g) if h0 is None else rearrange(h0, "b (g e) n -> (b g) n e", g=g)
        y, starts, last = _forward(c, h0_, any(ctx.needs_input_grad))
        ctx.c, ctx.starts, ctx.dims, ctx.has_h0 = c, starts, (b, g, l), h0 is not None
        return y.view(b, d, -1)[..., :l], rearrange(last, "(b g) n e -> b (g e) n", b=b).contiguous()

    @staticmethod
    def backward(ctx, dy, dlast):
        c, (b, g, l) = ctx.c, ctx.dims
        r, k, q, e = c.x.shape
        dy = rearrange(_pad(dy.float(), q).reshape(r, e, k, q), "r e k q -> r k q e")
        dlast = rearrange(dlast.float(), "b (g e) n -> (b g) n e", g=g)
        dx, ddt, dA, dB, dC, dh0 = _backward(c, ctx.starts, dy, dlast)
        dA = rearrange(dA.view(b, g, *dA.shape[1:]).sum(0), "g n e -> (g e) n")
        dB, dC = (rearrange(t, "(b g) k q n -> b g n (k q)", b=b)[..., :l] for t in (dB, dC))
        dh0 = rearrange(dh0, "(b g) n e -> b (g e) n", b=b) if ctx.has_h0 else None
        d = r // b * e
        return dx.view(b, d, -1)[..., :l], ddt.view(b, d, -1)[..., :l], dA, dB, dC, dh0, None


def chunk_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: Optional[torch.Tensor], chunk_size: Optional[int] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The chunked core (see the module docstring; layouts in :mod:`._common`)."""
    q = min(chunk_size or CHUNK_SIZE, x.shape[-1])
    return _ChunkedScan.apply(x, dt, A, B, C, h0, q)


def auto_chunk_size(length: int) -> int:
    """The power of two nearest ``sqrt(length)``: balances positions per chunk and chunks."""
    return 2 ** round(math.log2(max(length, 1)) / 2)


def sweep_core(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               h0: Optional[torch.Tensor], chunk_size: Optional[int] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The GPU core: every chunk advances position by position, all chunks at once.

    Chunks of ``Q ~ sqrt(L)`` tokens (``chunk_size`` None): 1. each chunk's end state from a zero
    start (``Q`` batched steps), 2. the states entering the chunks (a loop over chunks), 3. the
    chunks again from their entering states, reading ``y_t = C_t h_t`` (``Q`` steps).  About
    ``3 sqrt(L)`` launches of ``[B, K, G, N, E]``-sized steps, only products of per-step decays
    (all <= 1), gradients by autograd.  On a GPU this beats :func:`chunk_core`, whose short chunks
    are tuned for CPU caches and cost a few launches each (~20x slower there at 4k-64k tokens).
    """
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
    """The chunked implementation behind ``selective_scan_fn``: :func:`chunk_core` on CPU,
    :func:`sweep_core` on a GPU (``chunk_size`` exposed; None means each core's default)."""
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    core = chunk_core if u.device.type == "cpu" else sweep_core
    return run_selective_scan(core, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
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
