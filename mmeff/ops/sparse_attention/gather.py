"""The fast pure-PyTorch path: gather only the kept key blocks.

Static patterns: queries are cut into blocks of ``block_q`` tokens (the ``G`` query heads of a GQA
group ride along in the same block, so each key block is gathered once per KV head); each block
gathers its ``n`` key blocks (``pattern.kv_blocks``, the same for every batch and head) into
``[.., n*block_k, D]`` and one fused SDPA call attends, with the token-level rule as the boolean
mask inside the gathered blocks.

Per-token selections (``block_q == 1``: MoBA, NSA) run key-block-centric, as MoBA's own
implementation: the (query, selected block) pairs are sorted by key block and cut into segments of
``SEGMENT`` queries sharing one key block, so a key block is read once per segment rather than
once per query; each segment returns partial outputs and log-sum-exps, and every query merges its
``n`` partials (the softmax over the union of its blocks).  :func:`pairs`, :func:`slots` and
:func:`merge` are shared with the CUDA path (flex.py), which attends the same pairs in tiles of 128.

Compute and memory grow with the kept blocks, not with T*S.  Work runs in chunks of bounded size;
under autograd each chunk is checkpointed, so the backward pass too holds one chunk at a time.
Queries that see no key output zeros.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .naive import naive_attention
from .patterns import Pattern, cdiv

CHUNK_ELEMENTS = 1 << 24  # mask / scores + gathered keys and values held at once (~64 MB fp32)
SEGMENT = 64  # queries sharing one key block in the per-token path
NEG = -1e30  # a masked score: finite, so fully masked rows give no NaN forward or backward


def _chunked(fn: Callable, n: int, chunk: int, sliced: tuple, rest: tuple, grad: bool) -> List:
    """``fn(*sliced[c:c+chunk], *rest)`` for each chunk of dim 0; checkpointed under autograd."""
    outs = []
    for c in range(0, n, chunk):
        args = tuple(t[c:c + chunk] for t in sliced) + rest
        outs.append(checkpoint(fn, *args, use_reentrant=False) if grad and n > chunk else fn(*args))
    return outs


def _key_rows(t: torch.Tensor, lead: int, bk: int) -> torch.Tensor:
    """``t[B, S, Hk, D]`` whose first key sits ``lead`` into its block, as rows ``[B*Hk*nKB, bk*D]``."""
    nkb = cdiv(lead + t.shape[1], bk)
    t = F.pad(t, (0, 0, 0, 0, lead, nkb * bk - lead - t.shape[1]))
    return rearrange(t, "b (n t) h d -> (b h n) (t d)", t=bk)


def _key_mask(blocks: torch.Tensor, p: Pattern, S: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions ``[..., n*bk]`` of the keys of ``blocks[..., n]`` and whether they exist."""
    bk = p.block_k
    kpos = (blocks[..., None] * bk + torch.arange(bk, device=blocks.device, dtype=blocks.dtype)).flatten(-2)
    ok = (blocks >= 0).repeat_interleave(bk, dim=-1) & (kpos >= p.k_start) & (kpos < p.k_start + S)
    return kpos, ok


# ----------------------------------------------------------------------------- static patterns

def _attend_blocks(q: torch.Tensor, qpos: torch.Tensor, blocks: torch.Tensor, kb: torch.Tensor,
                   vb: torch.Tensor, p: Pattern, S: int, scale: float) -> torch.Tensor:
    """Query blocks ``q[C, N=B*Hk, M, D]`` at ``qpos[C, M]`` on key blocks ``blocks[C, n]``."""
    C, N, M, _ = q.shape
    bk, nkb = p.block_k, kb.shape[0] // N
    rows = (blocks - p.k_start // bk).clamp(min=0)[:, None, :] + nkb * torch.arange(N, device=q.device)[:, None]
    kg, vg = (t.index_select(0, rows.flatten()).view(C, N, -1, t.shape[1] // bk) for t in (kb, vb))
    kpos, ok = _key_mask(blocks, p, S)  # [C, n*bk]
    mask = ok[:, None, :]
    rule = p.mask(qpos[:, :, None], kpos[:, None, :])
    if rule is not None:
        mask = mask & rule  # [C, M, n*bk]
    seen = mask.any(-1, keepdim=True)
    mask = mask | ~seen  # rows that see nothing run unmasked and are zeroed below
    o = F.scaled_dot_product_attention(q, kg, vg, attn_mask=mask[:, None], scale=scale)  # [C, N, M, Dv]
    return o * seen[:, None]


def _static(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Pattern, scale: float,
            grad: bool) -> torch.Tensor:
    B, T, H, D = q.shape
    S, Hk = k.shape[1], k.shape[2]
    G, bq, bk = H // Hk, p.block_q, p.block_k
    blocks = p.kv_blocks[0, 0].to(torch.int32)  # [nQB, n]; int32 halves the rule's integer traffic
    nqb, n = blocks.shape
    q_lead = p.q_start % bq
    qb = F.pad(q, (0, 0, 0, 0, q_lead, nqb * bq - q_lead - T))
    qb = rearrange(qb, "b (n t) (h g) d -> n (b h) (g t) d", t=bq, g=G)  # [nQB, B*Hk, G*bq, D]
    qpos = (p.q_start - q_lead + torch.arange(nqb * bq, device=q.device, dtype=torch.int32)).view(nqb, bq)
    kb, vb = (_key_rows(t, p.k_start % bk, bk) for t in (k, v))
    chunk = max(1, CHUNK_ELEMENTS // (B * Hk * n * bk * (G * bq + 2 * D)))
    outs = _chunked(_attend_blocks, nqb, chunk, (qb, qpos.repeat(1, G), blocks), (kb, vb, p, S, scale), grad)
    o = rearrange(torch.cat(outs), "n (b h) (g t) d -> b (n t) (h g) d", b=B, g=G)
    return o[:, q_lead:q_lead + T]


# ----------------------------------------------------------------------------- per-token selections

def _attend_segments(qs: torch.Tensor, qpos: torch.Tensor, key_row: torch.Tensor, kb: torch.Tensor,
                     vb: torch.Tensor, p: Pattern, S: int, nkb: int, scale: float):
    """Segments ``qs[C, SEGMENT, D]`` at ``qpos`` against one key block each (row ``key_row[C]``):
    partial outputs ``[C, SEGMENT, Dv]``, log-sum-exps and whether each query saw a key."""
    bk = p.block_k
    kg, vg = (t.index_select(0, key_row).view(key_row.shape[0], bk, -1) for t in (kb, vb))
    blocks = (key_row % nkb).to(qpos.dtype) + p.k_start // bk  # absolute block ids
    kpos, ok = _key_mask(blocks[:, None], p, S)  # [C, bk]
    mask = ok[:, None, :] & (qpos >= 0)[:, :, None]
    rule = p.mask(qpos[:, :, None], kpos[:, None, :])
    if rule is not None:
        mask = mask & rule  # [C, SEGMENT, bk]
    s = (torch.einsum("cqd,ckd->cqk", qs, kg).float() * scale).masked_fill(~mask, NEG)
    lse = torch.logsumexp(s, dim=-1)
    o = torch.einsum("cqk,ckd->cqd", (s - lse[..., None]).exp().to(vg.dtype), vg)
    return o, lse, mask.any(-1)


class Pairs(NamedTuple):
    """The (query row, selected block) pairs of a per-token selection, sorted by key block and cut
    into segments of ``segment`` queries sharing one key block (padding slots: position -1)."""
    qs: torch.Tensor  # [nSeg, segment, D] the queries of each segment
    qpos: torch.Tensor  # [nSeg, segment] int32 absolute position of each (-1: padding)
    key_row: torch.Tensor  # [nSeg] row of the segment's key block in kb / vb
    kb: torch.Tensor  # [B*Hk*nKB, bk*D] the key blocks (padded) as rows ...
    vb: torch.Tensor  # ... and the value blocks
    nkb: int  # key blocks per (batch, KV head)
    flat: torch.Tensor  # [P] slot of each pair in [nSeg * segment]
    slot: torch.Tensor  # [P] position of each pair in [R * n] (query row, selection slot)
    rows: int  # R = B * Hk * T * G query rows
    n: int  # selections per query
    heads: Tuple[int, int, int]  # (B, Hk, G): rows are (b h t g)
    own: Optional[torch.Tensor]  # [R] (own_apart) whether the row selected its own block


def pairs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Pattern, segment: int,
          own_apart: bool = False) -> Pairs:
    """The key-block-sorted pairs of ``p``'s per-token selections (``p.kv_blocks[Bi, Hi, T, n]``).

    ``own_apart`` (causal patterns): pairs of earlier blocks only, seen whole; whether each row
    selected its own block comes back in ``own`` (the caller attends those apart), and selected
    later blocks, which a causal query cannot see, are dropped.
    """
    B, T, H, D = q.shape
    S, Hk = k.shape[1], k.shape[2]
    idx = p.kv_blocks  # [Bi, Hi, T, n]
    if idx.shape[1] == H and Hk != H:  # per-query-head selections: give each query head its keys
        k, v = (t.repeat_interleave(H // Hk, dim=2) for t in (k, v))
        Hk = H
    G, bk, n = H // Hk, p.block_k, idx.shape[-1]
    dev, R = q.device, B * Hk * T * G
    nkb = cdiv(p.k_start % bk + S, bk)
    kb, vb = (_key_rows(t, p.k_start % bk, bk) for t in (k, v))
    rows = rearrange(q, "b t (h g) d -> (b h t g) d", g=G)  # [R, D]
    row_pos = (p.q_start + torch.arange(T, device=dev)).repeat_interleave(G).repeat(B * Hk)  # [R]

    # (query row, slot) pairs of valid selections, sorted by key block
    blk = idx.expand(B, Hk, T, n)[:, :, :, None].expand(-1, -1, -1, G, -1).reshape(R, n)
    valid, own = blk >= 0, None
    if own_apart:
        own_blk = torch.div(row_pos, bk, rounding_mode="floor")[:, None]
        own, valid = (blk == own_blk).any(1), valid & (blk < own_blk)
    pair = valid.flatten().nonzero().squeeze(1)  # [P] over R*n
    row = torch.div(pair, n, rounding_mode="floor")
    key = torch.div(row, T * G, rounding_mode="floor") * nkb + blk.flatten()[pair] - p.k_start // bk
    key, order = key.sort(stable=True)
    pair, row = pair[order], row[order]
    counts = torch.bincount(key, minlength=B * Hk * nkb)
    segs = torch.div(counts + segment - 1, segment, rounding_mode="floor")
    rank = torch.arange(key.shape[0], device=dev) - (counts.cumsum(0) - counts)[key]
    flat = ((segs.cumsum(0) - segs)[key] + torch.div(rank, segment, rounding_mode="floor")) * segment \
        + rank % segment  # slot of each pair in [nSeg * segment]
    nseg = int(segs.sum())
    key_row = torch.repeat_interleave(torch.arange(B * Hk * nkb, device=dev), segs)  # [nSeg]
    qs = rows.new_zeros(nseg * segment, D).index_copy(0, flat, rows[row]).view(nseg, segment, D)
    qpos = torch.full((nseg * segment,), -1, device=dev, dtype=torch.int32)
    qpos = qpos.index_copy(0, flat, row_pos[row].to(torch.int32)).view(nseg, segment)
    return Pairs(qs, qpos, key_row, kb, vb, nkb, flat, pair, R, n, (B, Hk, G), own)


def slots(pr: Pairs, o_seg: torch.Tensor, lse_seg: torch.Tensor, seen_seg: torch.Tensor
          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The segments' partial outputs ``o_seg[nSeg * segment, Dv]``, log-sum-exps and whether each
    saw a key, by (row, selection slot): ``[R, n, Dv]``, ``[R, n]``, ``[R, n]`` (no pair: unseen)."""
    R, n, dev, flat = pr.rows, pr.n, o_seg.device, pr.flat
    lse = torch.full((R * n,), NEG, device=dev).index_copy(
        0, pr.slot, lse_seg[flat].float().masked_fill(~seen_seg[flat], NEG))
    part = o_seg.new_zeros(R * n, o_seg.shape[-1]).index_copy(0, pr.slot, o_seg[flat])
    seen = torch.zeros(R * n, dtype=torch.bool, device=dev).index_copy(0, pr.slot, seen_seg[flat])
    return part.view(R, n, -1), lse.view(R, n), seen.view(R, n)


def merge(pr: Pairs, part: torch.Tensor, lse: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Each query's output from its partials ``part[R, m, Dv]`` (log-sum-exps ``lse[R, m]``, and
    ``seen[R, m]``): the softmax over the union of its blocks, as ``[B, T, H, Dv]``."""
    B, Hk, G = pr.heads
    w = torch.softmax(lse, dim=-1) * seen.any(-1, keepdim=True)
    o = (w[..., None].to(part.dtype) * part).sum(1)
    return rearrange(o, "(b h t g) d -> b t (h g) d", b=B, h=Hk, g=G)


def _selective(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Pattern, scale: float,
               grad: bool) -> torch.Tensor:
    pr = pairs(q, k, v, p, SEGMENT)
    S, nseg = k.shape[1], pr.qs.shape[0]
    chunk = max(1, CHUNK_ELEMENTS // (SEGMENT * p.block_k * 3 + 2 * p.block_k * q.shape[-1]))
    outs = _chunked(_attend_segments, nseg, chunk, (pr.qs, pr.qpos, pr.key_row),
                    (pr.kb, pr.vb, p, S, pr.nkb, scale), grad)
    o_seg, lse_seg, seen_seg = (torch.cat(t).flatten(0, 1) for t in zip(*outs))
    return merge(pr, *slots(pr, o_seg, lse_seg, seen_seg))


def gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                     scale: Optional[float] = None) -> torch.Tensor:
    """Gather-path attention of ``q[B, T, H, D]`` on ``k, v[B, S, Hk, *]`` under ``pattern``."""
    p = pattern
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if p.selective:
        if p.block_q != 1:
            raise ValueError(f"selective patterns select per query (block_q=1), got block_q={p.block_q}")
        return _selective(q, k, v, p, scale, grad)
    if p.kv_blocks.shape[:2] != (1, 1):
        raise ValueError(f"static patterns share their blocks over batch and heads, got kv_blocks "
                         f"{tuple(p.kv_blocks.shape)}")
    o = _static(q, k, v, p, scale, grad)
    rows = min(p.dense_rows - p.q_start, q.shape[1])
    if rows > 0:  # global queries see every key: run them densely
        o = torch.cat([naive_attention(q[:, :rows], k, v, p, scale), o[:, rows:]], dim=1)
    return o
