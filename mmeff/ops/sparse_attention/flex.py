"""The CUDA path: FlexAttention (``torch.nn.attention.flex_attention``) compiled to a Triton kernel.

A static pattern's rule becomes the ``mask_mod``; ``create_block_mask`` turns it into a
``BlockMask`` so the kernel skips empty 128x128 tiles, and the mask is kept (the ``MAX_MASKS`` most
recent) and reused by later calls with the same numbers and lengths, since building it costs
milliseconds.  Per-token selections (MoBA, NSA) run key-block-centric instead (:func:`_selected`):
a query tile of the usual layout would need nearly every key tile, as its queries pick different
blocks.  Registered as the ``triton`` backend of the sparse ops.

Compilation: the rule's numbers are passed as tensors, so a new window size or grid does not
recompile; a new structure (rule, causal flags, grid rank) or shape (lengths, heads, dtype)
compiles once (FlexAttention's dynamic-shape lowering is not reliable in torch 2.11).  Hitting
torch.compile's recompile limit would silently fall back to an unfused kernel that materialises
T*S scores, so the limit is raised to ``RECOMPILE_LIMIT`` and, past ``MAX_VARIANTS`` compiled
variants, new ones take the gather path with a warning (per-token selections compile once per
bucket of their pair-tile count, rounded up to one of 8 steps per power of two, and count those).
Short query chunks (decoding, ``T < MIN_QUERIES``) take the gather path instead of compiling for
every cache length.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch
from einops import rearrange

from .._dispatch import logger
from .gather import NEG, gather_attention, merge, pairs, slots
from .patterns import Pattern

MIN_QUERIES = 128
TILE = 128
RECOMPILE_LIMIT = 64
MAX_VARIANTS = 48
MAX_MASKS = 32  # static block masks kept (a training run uses a few shapes again and again)
_COMPILED: Dict[str, Callable] = {}
_MASKS: Dict[tuple, Any] = {}
_VARIANTS: set = set()


def _flex() -> Callable:
    if "flex" not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["flex"]


def _as_tensors(value: Any, device) -> Any:
    """Ints (and tuples of ints) as 0-d tensors, so compiled kernels do not specialise on them."""
    if isinstance(value, tuple):
        return tuple(_as_tensors(v, device) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.tensor(value, device=device)
    return value


def _bucket(n: int) -> int:
    """``n`` rounded up to one of 8 steps per power of two: few distinct shapes to compile."""
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def _static_mask(key: tuple, mask_mod: Callable, T: int, S: int, device):
    """The BlockMask of a static pattern, built once for its ``key`` (numbers and lengths) and
    kept among the ``MAX_MASKS`` most recently used."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask = _MASKS.pop(key, None)
    if mask is None:
        mask = create_block_mask(mask_mod, None, None, T, S, device=device, _compile=True)
    _MASKS[key] = mask  # most recently used last
    if len(_MASKS) > MAX_MASKS:
        _MASKS.pop(next(iter(_MASKS)))
    return mask


def _own_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Pattern, scale: Optional[float]):
    """Causal attention of every query inside its own key block: outputs ``[B, H, T, Dv]`` and
    log-sum-exps ``[B, H, T]`` (a static pattern: its block mask is built once)."""
    T, S, H, Hk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    q_start, k_start, bk = _as_tensors((p.q_start, p.k_start, p.block_k), q.device)

    def mask_mod(b, h, qi, kj):
        qp, kp = qi + q_start, kj + k_start
        return (kp // bk == qp // bk) & (kp <= qp)

    mask = _static_mask(("own block", p.block_k, p.q_start, p.k_start, T, S, str(q.device)), mask_mod,
                        T, S, q.device)
    return _flex()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask, scale=scale,
                   enable_gqa=H != Hk, return_lse=True)


def _pairs_attention(pr, p: Pattern, S: int, scale: Optional[float], nb: int, tpb: int):
    """FlexAttention of the pairs' query tiles (padded to ``nb``: their outputs are never read),
    each on the whole of its key block: partial outputs ``[nSeg * TILE, Dv]`` and log-sum-exps.
    Key blocks are padded to whole tiles (``tpb`` each), so a tile's keys are its block's; the mask
    is arithmetic on the key index alone (no gathers in the kernel)."""
    from torch.nn.attention.flex_attention import BlockMask

    bk, dev, bkp = p.block_k, pr.qs.device, tpb * TILE
    nseg, D = pr.qs.shape[0], pr.qs.shape[-1]
    qs = torch.nn.functional.pad(pr.qs, (0, 0, 0, 0, 0, nb - nseg)).view(1, 1, nb * TILE, D)
    kv = [torch.nn.functional.pad(t.view(t.shape[0], bk, -1), (0, 0, 0, bkp - bk)).view(1, 1, lk_, -1)
          for t, lk_ in ((pr.kb, pr.kb.shape[0] * bkp), (pr.vb, pr.vb.shape[0] * bkp))]
    lk = kv[0].shape[2]
    ka0, lo, hi, bk_t, bkp_t, nkb = (torch.tensor(x, device=dev, dtype=torch.int32) for x in
                                     (p.k_start // bk, p.k_start, p.k_start + S, bk, bkp, pr.nkb))

    def mask_mod(b, h, qi, kj):  # the key exists: among its block's bk keys, in [k_start, k_start + S)
        m = kj % bkp_t
        kp = (ka0 + (kj // bkp_t) % nkb) * bk_t + m
        return (m < bk_t) & (kp >= lo) & (kp < hi)

    # query tile t (a segment) reads its block's tpb key tiles: "full" where every key exists (no
    # mask evaluated there), partial at the edges; key tile c is read by its block's segments
    full_tile = mask_mod(0, 0, 0, torch.arange(lk, device=dev, dtype=torch.int32)).view(-1, TILE).all(1)
    real = (torch.arange(nb, device=dev) < nseg)[:, None]
    tiles = torch.nn.functional.pad(pr.key_row, (0, nb - nseg))[:, None] * tpb + torch.arange(tpb, device=dev)
    full = full_tile[tiles] & real
    part = ~full_tile[tiles] & real
    segs = torch.bincount(pr.key_row, minlength=pr.kb.shape[0])  # segments of each key block, in order
    start = segs.cumsum(0) - segs
    r = torch.div(torch.arange(lk // TILE, device=dev), tpb, rounding_mode="floor")
    q_idx = (start[r][:, None] + torch.arange(max(1, int(segs.max())), device=dev)).clamp(max=nb - 1)

    def i32(t):
        return t.to(torch.int32)[None, None].contiguous()

    def first(sel):  # the selected tiles of each row first
        return torch.gather(tiles, 1, torch.argsort((~sel).to(torch.uint8), dim=1, stable=True))

    mask = BlockMask(seq_lengths=(nb * TILE, lk), kv_num_blocks=i32(part.sum(1)), kv_indices=i32(first(part)),
                     full_kv_num_blocks=i32(full.sum(1)), full_kv_indices=i32(first(full)),
                     q_num_blocks=i32(torch.where(full_tile, 0, segs[r])), q_indices=i32(q_idx),
                     full_q_num_blocks=i32(torch.where(full_tile, segs[r], 0)), full_q_indices=i32(q_idx),
                     BLOCK_SIZE=(TILE, TILE), mask_mod=mask_mod)
    o, lse = _flex()(qs, *kv, block_mask=mask, scale=scale, return_lse=True)
    return o[0, 0, :nseg * TILE], lse[0, 0, :nseg * TILE]


def _selected(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: Pattern, scale: Optional[float]):
    """Per-token selections (MoBA, NSA), key-block-centric as MoBA's own kernel: the (query,
    earlier block) pairs sorted by key block in tiles of ``TILE`` queries sharing one block
    (:func:`.gather.pairs`) attend in one FlexAttention call, each tile to its block only; with
    ``causal`` the queries' own blocks run apart as a static block-diagonal causal pattern; each
    query merges its partials by their log-sum-exps (FlexAttention's LSE is differentiable).
    Work and memory grow with the pairs, not with T*S."""
    causal = p.rule is not None
    pr = pairs(q, k, v, p, TILE, own_apart=causal)
    G = pr.heads[2]
    nb, tpb = _bucket(pr.qs.shape[0]), -(-p.block_k // TILE)  # tiles, key tiles per block
    variant = ("pairs", nb, pr.kb.shape[0] * tpb, q.shape[-1], v.shape[-1], q.dtype)
    if variant not in _VARIANTS and len(_VARIANTS) >= MAX_VARIANTS:
        logger.warning("mmeff sparse attention: %d FlexAttention variants compiled already; "
                       "running these selections on the gather path", len(_VARIANTS))
        return gather_attention(q, k, v, p, scale)
    _VARIANTS.add(variant)
    if pr.qs.shape[0]:
        o, lse = _pairs_attention(pr, p, k.shape[1], scale, nb, tpb)
        part, lse, seen = slots(pr, o, lse, lse > float("-inf"))
    else:  # every selection is the query's own block
        part = q.new_zeros(pr.rows, pr.n, v.shape[-1])
        lse = part.new_full((pr.rows, pr.n), NEG, dtype=torch.float32)
        seen = torch.zeros(pr.rows, pr.n, dtype=torch.bool, device=q.device)
    if causal:
        o_own, lse_own = _own_blocks(q, k, v, p, scale)
        o_own = rearrange(o_own, "b (h g) t d -> (b h t g) 1 d", g=G)
        lse_own = rearrange(lse_own.float(), "b (h g) t -> (b h t g) 1", g=G)
        lse_own = lse_own.masked_fill(~pr.own[:, None], NEG)
        part, lse = torch.cat([part, o_own.to(part.dtype)], 1), torch.cat([lse, lse_own], 1)
        seen = torch.cat([seen, pr.own[:, None]], 1)
    return merge(pr, part, lse, seen)


def flex_attention_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                        scale: Optional[float] = None) -> torch.Tensor:
    """FlexAttention of ``q[B, T, H, D]`` on ``k, v[B, S, Hk, *]`` under ``pattern``."""
    B, T, H, _ = q.shape
    S, Hk = k.shape[1], k.shape[2]
    p = pattern
    if T < MIN_QUERIES:
        return gather_attention(q, k, v, pattern, scale)
    variant = (p.rule, tuple(v_ for v_ in p.params.values() if isinstance(v_, (bool, tuple))),
               tuple(q.shape), tuple(k.shape), v.shape[-1], q.dtype, p.selective, p.kv_blocks.shape[:2])
    if variant not in _VARIANTS and len(_VARIANTS) >= MAX_VARIANTS:
        logger.warning("mmeff sparse attention: %d FlexAttention variants compiled already; "
                       "running this new shape/pattern on the gather path", len(_VARIANTS))
        return gather_attention(q, k, v, pattern, scale)
    _VARIANTS.add(variant)
    params = _as_tensors(p.params, q.device)
    q_start, k_start = _as_tensors((p.q_start, p.k_start), q.device)

    def mask_mod(b, h, qi, kj):
        return p.rule(qi + q_start, kj + k_start, **params) if p.rule is not None else qi >= 0

    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    with torch._dynamo.config.patch(recompile_limit=limit):
        if p.selective:
            return _selected(q, k, v, p, scale)
        key = (p.rule, tuple(sorted(p.params.items())), p.q_start, p.k_start, p.block_q, p.block_k, T, S,
               str(q.device))  # a static pattern's mask depends on its numbers only: built once
        mask = _static_mask(key, mask_mod, T, S, q.device)
        o = _flex()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask,
                    scale=scale, enable_gqa=H != Hk)
    return o.transpose(1, 2)
