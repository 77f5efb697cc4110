"""The CUDA path: FlexAttention (``torch.nn.attention.flex_attention``) compiled to a Triton kernel.

The pattern's rule becomes the ``mask_mod`` (dynamic block selections are looked up in a
``[Bi, Hi, nQB, nKB]`` membership table); ``create_block_mask`` turns it into a ``BlockMask`` so the
kernel skips empty 128x128 tiles; a static pattern's mask is kept (the ``MAX_MASKS`` most recent)
and reused by later calls with the same numbers and lengths, since building it costs milliseconds.
Registered as the ``triton`` backend of the sparse ops.

Compilation: the rule's numbers are passed as tensors, so a new window size or grid does not
recompile; a new structure (rule, causal flags, grid rank) or shape (lengths, heads, dtype)
compiles once (FlexAttention's dynamic-shape lowering is not reliable in torch 2.11).  Hitting
torch.compile's recompile limit would silently fall back to an unfused kernel that materialises
T*S scores, so the limit is raised to ``RECOMPILE_LIMIT`` and, past ``MAX_VARIANTS`` compiled
variants, new ones take the gather path with a warning.  Short query chunks (decoding,
``T < MIN_QUERIES``) take the gather path instead of compiling for every cache length.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch

from .._dispatch import logger
from .gather import gather_attention
from .patterns import Pattern, table_from_blocks

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


def _tiles_from_table(table: torch.Tensor, p: Pattern, T: int, S: int, H: int, tile: int):
    """``(kv_num_blocks, kv_indices)`` of the ``tile x tile`` FlexAttention tiles touched by the
    selected blocks ``table[Bi, Hi, nQB, nKB]`` (instead of evaluating the mask on all T*S pairs)."""
    dev = table.device
    qa0, ka0 = p.q_start // p.block_q, p.k_start // p.block_k
    nqt, nkt = -(-T // tile), -(-S // tile)
    rows = torch.div(p.q_start + torch.arange(T, device=dev), p.block_q, rounding_mode="floor") - qa0
    per_q = torch.nn.functional.pad(table[:, :, rows], (0, 0, 0, nqt * tile - T))  # [Bi, Hi, nQT*tile, nKB]
    per_tile = per_q.view(*per_q.shape[:2], nqt, tile, -1).any(3)  # [Bi, Hi, nQT, nKB]
    kt = torch.arange(nkt, device=dev) * tile
    lo = torch.div(p.k_start + kt, p.block_k, rounding_mode="floor") - ka0
    hi = torch.div(p.k_start + (kt + tile).clamp(max=S) - 1, p.block_k, rounding_mode="floor") - ka0
    csum = torch.nn.functional.pad(per_tile.int().cumsum(-1), (1, 0))
    need = (csum[..., hi + 1] - csum[..., lo]) > 0  # [Bi, Hi, nQT, nKT]
    need = need.expand(-1, H, -1, -1) if need.shape[1] == 1 else need.repeat_interleave(H // need.shape[1], 1)
    order = torch.argsort((~need).to(torch.uint8), dim=-1, stable=True)
    return need.sum(-1).to(torch.int32), order.to(torch.int32)


def flex_attention_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                        scale: Optional[float] = None) -> torch.Tensor:
    """FlexAttention of ``q[B, T, H, D]`` on ``k, v[B, S, Hk, *]`` under ``pattern``."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

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
    qa0, ka0 = p.q_start // p.block_q, p.k_start // p.block_k
    table, bi, group = None, 1, H
    if p.selective:
        table = table_from_blocks(p.kv_blocks, ka0, (p.k_start + S - 1) // p.block_k - ka0 + 1)
        bi, group = table.shape[0], H // table.shape[1]
    params = _as_tensors(p.params, q.device)
    q_start, k_start, bq, bk, qa0, ka0 = _as_tensors((p.q_start, p.k_start, p.block_q, p.block_k, qa0, ka0),
                                                     q.device)

    def mask_mod(b, h, qi, kj):
        qp, kp = qi + q_start, kj + k_start
        m = p.rule(qp, kp, **params) if p.rule is not None else qi >= 0
        if table is not None:
            m = m & table[b if bi > 1 else 0, h // group, qp // bq - qa0, kp // bk - ka0]
        return m

    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    with torch._dynamo.config.patch(recompile_limit=limit):
        if table is None:  # a static pattern's mask depends on its numbers only: built once
            key = (p.rule, tuple(sorted(p.params.items())), p.q_start, p.k_start, p.block_q,
                   p.block_k, T, S, str(q.device))
            mask = _MASKS.pop(key, None)
            if mask is None:
                mask = create_block_mask(mask_mod, None, None, T, S, device=q.device, _compile=True)
            _MASKS[key] = mask  # most recently used last
            if len(_MASKS) > MAX_MASKS:
                _MASKS.pop(next(iter(_MASKS)))
        else:  # B/H-dependent selections: build the tiles from the table, not from T*S evaluations
            num, idx = _tiles_from_table(table, p, T, S, H, TILE)
            mask = BlockMask.from_kv_blocks(num, idx, BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(T, S))
        o = _flex()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask,
                    scale=scale, enable_gqa=H != Hk)
    return o.transpose(1, 2)
