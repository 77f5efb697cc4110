"""The fast pure-PyTorch path: gather only the kept key blocks of each query block.

Queries are cut into blocks of ``block_q`` tokens (``G`` query heads of a GQA group ride along in
the same block, so each key block is gathered once per KV head); each block gathers its ``n`` key
blocks (``pattern.kv_blocks``) into ``[.., n*block_k, D]`` and runs one batched matmul, the
token-level rule masking inside the gathered blocks.  Compute and memory grow with the kept blocks,
not with T*S.  Query blocks are processed in chunks of bounded size; under autograd each chunk is
checkpointed, so the backward pass too holds one chunk's scores at a time.  Queries that see no key
output zeros.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .naive import naive_attention
from .patterns import Pattern, cdiv

CHUNK_ELEMENTS = 1 << 24  # scores + gathered keys/values held at once (about 64 MB in fp32)


def _attend_blocks(q: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, loc: torch.Tensor,
                   kpos: torch.Tensor, kok: torch.Tensor, qpos: torch.Tensor,
                   pattern: Pattern, scale: float) -> torch.Tensor:
    """One chunk: ``q[B, Hk, C, M, D]`` against key blocks ``kb[B, Hk, nKB, bk, D]`` at ``loc[Bi, Hi, C, n]``."""
    B, Hk = q.shape[:2]
    b_ix = torch.arange(B, device=q.device)[:, None, None, None]
    h_ix = torch.arange(Hk, device=q.device)[None, :, None, None]
    kg = kb[b_ix, h_ix, loc].flatten(3, 4)  # [B, Hk, C, n*bk, D]
    vg = vb[b_ix, h_ix, loc].flatten(3, 4)
    s = torch.einsum("bhcmd,bhckd->bhcmk", q, kg).float() * scale  # [B, Hk, C, M, n*bk]
    m = kok[..., None, :]
    rule = pattern.mask(qpos[:, :, None], kpos[..., None, :])
    if rule is not None:
        m = m & rule
    s = s.masked_fill(~m, float("-inf"))
    e = (s - s.amax(-1, keepdim=True).detach().clamp(min=-1e30)).exp()
    p = e / e.sum(-1, keepdim=True).clamp(min=1e-30)
    return torch.einsum("bhcmk,bhckd->bhcmd", p.to(vg.dtype), vg)


def gather_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                     scale: Optional[float] = None) -> torch.Tensor:
    """Block-gather attention of ``q[B, T, H, D]`` on ``k, v[B, S, Hk, *]`` under ``pattern``."""
    p = pattern
    B, T, H, D = q.shape
    S, Hk = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    idx = p.kv_blocks  # [Bi, Hi, nQB, n]
    if idx.shape[1] == H and Hk != H:  # per-query-head blocks: give each query head its own keys
        k, v = (t.repeat_interleave(H // Hk, dim=2) for t in (k, v))
        Hk = H
    G, bq, bk = H // Hk, p.block_q, p.block_k
    qa0, ka0 = p.q_start // bq, p.k_start // bk
    nqb, n = idx.shape[2], idx.shape[3]
    q_lead, k_lead = p.q_start - qa0 * bq, p.k_start - ka0 * bk
    nkb = cdiv(k_lead + S, bk)

    qb = F.pad(q, (0, 0, 0, 0, q_lead, nqb * bq - q_lead - T))
    qb = rearrange(qb, "b (n t) (h g) d -> b h n (g t) d", t=bq, g=G)  # [B, Hk, nQB, G*bq, D]
    kb, vb = (rearrange(F.pad(t, (0, 0, 0, 0, k_lead, nkb * bk - k_lead - S)),
                        "b (n t) h d -> b h n t d", t=bk) for t in (k, v))  # [B, Hk, nKB, bk, *]
    qpos = (qa0 * bq + torch.arange(nqb * bq, device=q.device)).view(nqb, bq).repeat(1, G)
    kpos = idx[..., None] * bk + torch.arange(bk, device=q.device)  # [Bi, Hi, nQB, n, bk]
    kok = ((idx[..., None] >= 0) & (kpos >= p.k_start) & (kpos < p.k_start + S)).flatten(-2)
    kpos, loc = kpos.flatten(-2), (idx - ka0).clamp(min=0)

    per_block = B * Hk * n * bk * (3 * G * bq + 2 * D)
    chunk = max(1, CHUNK_ELEMENTS // per_block)
    ckpt = torch.is_grad_enabled() and nqb > chunk and any(t.requires_grad for t in (q, k, v))
    outs = []
    for c in range(0, nqb, chunk):
        sl = slice(c, c + chunk)
        args = (qb[:, :, sl], kb, vb, loc[:, :, sl], kpos[:, :, sl], kok[:, :, sl], qpos[sl], p, scale)
        outs.append(checkpoint(_attend_blocks, *args, use_reentrant=False) if ckpt else _attend_blocks(*args))
    o = rearrange(torch.cat(outs, dim=2), "b h n (g t) d -> b (n t) (h g) d", g=G)[:, q_lead:q_lead + T]
    rows = min(p.dense_rows - p.q_start, T)
    if rows > 0:  # global queries see every key: run them densely
        o = torch.cat([naive_attention(q[:, :rows], k, v, p, scale), o[:, rows:]], dim=1)
    return o
