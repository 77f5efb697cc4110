"""Dynamic block selection: which key blocks each query token attends to (MoBA, NSA).

Both run under ``no_grad`` (selection is a hard top-k; gradients flow through the attention over the
selected blocks, as in the papers) and in chunks of queries, so memory stays O(T * blocks / chunk).
Returned indices are absolute key-block ids ``[B, Hs, T, n]`` padded with -1.
"""
from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange

from .patterns import cdiv

CHUNK_SCORES = 1 << 22  # query-by-block scores held at once


def _topk_blocks(score: torch.Tensor, qpos: torch.Tensor, block: int, top_k: int, causal: bool,
                 forced_before: int, num_init: int = 0) -> torch.Tensor:
    """Top-k of ``score[.., t, nB]`` with future blocks excluded (causal) and some blocks forced.

    Forced: the query's own block and the ``forced_before`` blocks before it, and blocks < num_init.
    """
    cur = torch.div(qpos, block, rounding_mode="floor")[:, None]  # [t, 1]
    blk = torch.arange(score.shape[-1], device=score.device)[None]
    forced = ((blk <= cur) & (blk >= cur - forced_before)) | (blk < num_init)
    score = score.masked_fill(forced, float("inf"))
    if causal:
        score = score.masked_fill(blk > cur, float("-inf"))
    top = score.topk(min(top_k, score.shape[-1]), dim=-1)
    return torch.where(top.values > float("-inf"), top.indices, -1)


@torch.no_grad()
def moba_select(q: torch.Tensor, k: torch.Tensor, block_size: int, top_k: int,
                causal: bool = True) -> torch.Tensor:
    """MoBA gating: each query takes the ``top_k`` key blocks with the largest ``q . mean(K_block)``.

    The query's own block always counts as selected (one of the ``top_k``); with ``causal`` future
    blocks are never selected.  Queries are the last T of the S key positions.

    Returns:
        ``[B, H, T, min(top_k, nKB)]`` block ids (-1 where fewer blocks exist).
    """
    B, T, H, _ = q.shape
    S, Hk = k.shape[1], k.shape[2]
    nkb = cdiv(S, block_size)
    kp = torch.nn.functional.pad(k.float(), (0, 0, 0, 0, 0, nkb * block_size - S))
    count = (S - torch.arange(nkb, device=k.device) * block_size).clamp(max=block_size)
    pooled = rearrange(kp, "b (n t) h d -> b h n t d", t=block_size).sum(3) / count[:, None]
    pooled = pooled.repeat_interleave(H // Hk, dim=1)  # [B, H, nKB, D]
    qpos = torch.arange(S - T, S, device=q.device)
    chunk = max(1, CHUNK_SCORES // (B * H * nkb))
    out = []
    for c in range(0, T, chunk):
        s = torch.einsum("bthd,bhnd->bhtn", q[:, c:c + chunk].float(), pooled)
        out.append(_topk_blocks(s, qpos[c:c + chunk], block_size, top_k, causal, 0))
    return torch.cat(out, dim=2)


@torch.no_grad()
def nsa_select(q: torch.Tensor, k_cmp: torch.Tensor, num_keys: int, cmp_block: int, cmp_stride: int,
               select_block: int, num_select: int, *, num_init: int = 1, num_local: int = 2,
               causal: bool = True, q_start: Optional[int] = None,
               scale: Optional[float] = None) -> torch.Tensor:
    """NSA block selection from the compressed-attention probabilities (arXiv 2502.11089, sec. 3.3.2).

    ``p_cmp = softmax(q . K_cmp)`` over the compressed tokens a query sees; each compressed token's
    probability is added to every selection block it overlaps (eq. 9, for any block/stride), summed
    over the query heads of a GQA group (eq. 10), and the top ``num_select`` blocks are kept; the
    ``num_init`` first blocks and the ``num_local`` most recent ones (own block included) are always
    kept.  Compressed token c covers keys ``[c*cmp_stride, c*cmp_stride + cmp_block)``.

    Args:
        q: ``[B, T, H, D]`` queries at positions ``q_start ..`` (default: the last T of ``num_keys``).
        k_cmp: ``[B, nC, Hk, D]`` compressed keys.
        num_keys: S, the number of (uncompressed) keys.

    Returns:
        ``[B, Hk, T, min(num_select, nSB)]`` selection-block ids (-1 for empty slots).
    """
    B, T, H, D = q.shape
    nc, Hk = k_cmp.shape[1], k_cmp.shape[2]
    scale = D ** -0.5 if scale is None else scale
    q_start = num_keys - T if q_start is None else q_start
    nsb = cdiv(num_keys, select_block)
    start = torch.arange(nc, device=q.device)[:, None] * cmp_stride
    blk = torch.arange(nsb, device=q.device)[None] * select_block
    overlap = ((start < blk + select_block) & (start + cmp_block > blk)).float()  # [nC, nSB]
    kc = k_cmp.float().repeat_interleave(H // Hk, dim=2)
    qpos = torch.arange(q_start, q_start + T, device=q.device)
    chunk = max(1, CHUNK_SCORES // (B * H * max(nc, nsb)))
    out = []
    for c in range(0, T, chunk):
        s = torch.einsum("bthd,bchd->bhtc", q[:, c:c + chunk].float(), kc) * scale
        if causal:
            seen = start[:, 0] + cmp_block - 1 <= qpos[c:c + chunk, None]  # [t, nC]
            s = s.masked_fill(~seen, float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows that see nothing: all zeros
        imp = rearrange(p, "b (h g) t c -> b h g t c", h=Hk).sum(2) @ overlap  # [B, Hk, t, nSB]
        out.append(_topk_blocks(imp, qpos[c:c + chunk], select_block, num_select, causal,
                                num_local - 1, num_init))
    return torch.cat(out, dim=2)
