"""Sparse attention patterns: a token-level rule plus the key blocks each query block needs.

A :class:`Pattern` is what every implementation (dense reference, block gather, FlexAttention)
consumes.  Positions are absolute: query ``q[:, t]`` sits at ``q_start + t`` and key ``k[:, s]`` at
``k_start + s`` (streaming passes a trimmed cache with ``k_start > 0``).  Blocks are absolute too:
query block ``a`` holds positions ``[a*block_q, (a+1)*block_q)``, key block ``b`` holds
``[b*block_k, (b+1)*block_k)``.

Static patterns (sliding window, neighborhood, block-sparse, compressed-causal) are *defined* by
their ``rule``; ``kv_blocks`` is only a cover that lets the gather path skip empty blocks, and the
dense reference ignores it (so a block cover that misses a needed block fails the tests).  Dynamic
patterns (MoBA / NSA block selection) are ``selective``: the selected blocks are part of the
definition and the rule (causality) applies inside them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

Rule = Callable[..., torch.Tensor]


@dataclass
class Pattern:
    """A sparse attention pattern (see the module docstring).

    Attributes:
        rule: ``rule(qpos, kpos, **params) -> bool`` on broadcastable absolute positions (None: all
            pairs); a module-level function, its numbers in ``params`` (FlexAttention passes them as
            tensors, so a new window size or grid does not recompile the kernel).
        params: the rule's parameters (ints, tuples of ints, bools).
        block_q, block_k: block sizes of ``kv_blocks``.
        kv_blocks: ``[Bi, Hi, nQB, n]`` absolute key-block ids for each query block from
            ``q_start // block_q`` on; -1 marks an empty slot; Bi in {1, B}, Hi in {1, Hk, H}.
        q_start, k_start: absolute positions of ``q[:, 0]`` and ``k[:, 0]``.
        selective: the blocks are part of the definition (dynamic selection).
        dense_rows: queries at positions < dense_rows see every key allowed by the rule (global
            tokens); the gather path runs them densely and leaves them out of ``kv_blocks``.
    """

    rule: Optional[Rule]
    params: Dict[str, Any]
    block_q: int
    block_k: int
    kv_blocks: torch.Tensor
    q_start: int = 0
    k_start: int = 0
    selective: bool = False
    dense_rows: int = 0

    def mask(self, qpos: torch.Tensor, kpos: torch.Tensor) -> Optional[torch.Tensor]:
        """The rule on absolute positions (None when every pair is allowed)."""
        return None if self.rule is None else self.rule(qpos, kpos, **self.params)


# ----------------------------------------------------------------------------- helpers

def check_grid(grid: Sequence[int], ndim: Optional[int] = None, name: str = "grid") -> Tuple[int, ...]:
    """Validate a grid ``(H, W)`` or ``(T, H, W)`` of positive ints and return it as a tuple."""
    ok = isinstance(grid, (tuple, list)) and len(grid) in (2, 3) and all(
        isinstance(g, int) and g > 0 for g in grid)
    if not ok or (ndim is not None and len(grid) != ndim):
        want = f"{ndim} positive ints" if ndim else "(H, W) or (T, H, W) of positive ints"
        raise ValueError(f"{name} must be {want}, got {grid!r}")
    return tuple(grid)


def per_axis(name: str, value, ndim: int, *, minimum: int = 1) -> Tuple[int, ...]:
    """An int or a per-axis tuple as an ``ndim``-tuple of ints >= ``minimum``."""
    vals = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(vals) != ndim or not all(isinstance(v, int) and v >= minimum for v in vals):
        raise ValueError(f"{name} must be an int >= {minimum} or {ndim} of them, got {value!r}")
    return vals


def unravel(pos: torch.Tensor, grid: Sequence[int]) -> List[torch.Tensor]:
    """Raster coordinates of flat positions; the first axis is unbounded (a stream of frames)."""
    coords = []
    for n in reversed(grid[1:]):
        coords.append(pos % n)
        pos = pos // n
    return [pos] + coords[::-1]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _query_blocks(T: int, q_start: int, bq: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """First and last absolute query position of each query block touching ``[q_start, q_start+T)``."""
    a = torch.arange(q_start // bq, (q_start + T - 1) // bq + 1, device=device)
    return (a * bq).clamp(min=q_start), (a * bq + bq - 1).clamp(max=q_start + T - 1)


def blocks_from_table(table: torch.Tensor, first: int) -> torch.Tensor:
    """Key-block ids ``first + j`` of the True entries of ``table[..., nQB, nKB]``, padded with -1."""
    n = max(int(table.sum(-1).max()), 1)
    cols = torch.arange(table.shape[-1], device=table.device)
    keyed = torch.where(table, cols, table.shape[-1])  # kept columns first after sorting
    idx = keyed.sort(dim=-1).values[..., :n]
    return torch.where(idx < table.shape[-1], idx + first, -1)


def range_blocks(lo: torch.Tensor, hi: torch.Tensor, S: int, k_start: int, bk: int) -> torch.Tensor:
    """``[1, 1, nQB, n]`` key blocks covering positions ``lo..hi`` (per query block) within the keys."""
    first, last = k_start // bk, (k_start + S - 1) // bk
    b_lo = torch.div(lo, bk, rounding_mode="floor").clamp(min=first)
    b_hi = torch.div(hi, bk, rounding_mode="floor").clamp(max=last)
    n = max(int((b_hi - b_lo).max()) + 1, 1)
    idx = b_lo[:, None] + torch.arange(n, device=lo.device)
    return torch.where(idx <= b_hi[:, None], idx, -1)[None, None]


def table_from_blocks(kv_blocks: torch.Tensor, first: int, nkb: int) -> torch.Tensor:
    """Dense block membership ``[Bi, Hi, nQB, nkb]`` (column j = absolute block first + j)."""
    shape = kv_blocks.shape[:-1] + (nkb + 1,)
    col = torch.where(kv_blocks >= 0, kv_blocks - first, nkb)
    table = torch.zeros(shape, dtype=torch.bool, device=kv_blocks.device)
    return table.scatter_(-1, col, True)[..., :nkb]


# ----------------------------------------------------------------------------- 1D patterns

def causal_rule(i, j):
    """Keys up to the query."""
    return j <= i


def sliding_rule(i, j, window, causal: bool):
    """Keys closer than ``window`` (and not after the query if causal)."""
    d = i - j
    m = (d < window) & (d > -window)
    return m & (d >= 0) if causal else m


def sliding_window(T: int, S: int, window: int, causal: bool, block: int,
                   k_start: int = 0, device=None) -> Pattern:
    """Keys with ``|i - j| < window`` (and ``j <= i`` if causal); queries are the last T positions."""
    q_start = k_start + S - T
    lo, hi = _query_blocks(T, q_start, block, device)
    kv = range_blocks(lo - window + 1, hi if causal else hi + window - 1, S, k_start, block)
    return Pattern(sliding_rule, dict(window=window, causal=causal), block, block, kv, q_start, k_start)


def block_sparse_rule(i, j, block, num_local, num_global, stride, strided: bool, causal: bool):
    """Local blocks, global tokens and (if ``strided``) every ``stride``-th block; see :func:`block_sparse`."""
    d = torch.div(i, block, rounding_mode="floor") - torch.div(j, block, rounding_mode="floor")
    m = (d <= num_local) & (d >= -num_local) | (j < num_global)
    if strided:
        m = m | (d % stride == 0)
    return m & (j <= i) if causal else m | (i < num_global)


def block_sparse(T: int, S: int, block: int, num_local_blocks: int, num_global_tokens: int,
                 stride: int, causal: bool, device=None) -> Pattern:
    """BigBird / Longformer / Sparse-Transformer family on blocks of ``block`` tokens.

    Query block ``a`` sees key block ``b`` if ``|a - b| <= num_local_blocks`` (local), if
    ``stride > 0`` and ``(a - b) % stride == 0`` (strided / dilated blocks), and every query sees the
    first ``num_global_tokens`` tokens; without causality those tokens also see everything.
    """
    q_start = S - T
    g = num_global_tokens
    params = dict(block=block, num_local=num_local_blocks, num_global=g, stride=max(stride, 1),
                  strided=stride > 0, causal=causal)
    qa = torch.arange(q_start // block, (S - 1) // block + 1, device=device)[:, None]
    kb = torch.arange(0, (S - 1) // block + 1, device=device)[None, :]
    d = qa - kb
    table = (d.abs() <= num_local_blocks) | (kb * block < g)
    if stride:
        table |= d % stride == 0
    if causal:
        table &= d >= 0
    return Pattern(block_sparse_rule, params, block, block, blocks_from_table(table, 0)[None, None],
                   q_start, 0, dense_rows=0 if causal else g)


def compressed_rule(i, j, block, stride):
    """Compressed token j (keys ``[j*stride, j*stride + block)``) once complete at query i."""
    return j * stride + block - 1 <= i


def compressed(T: int, n_cmp: int, block: int, stride: int, q_start: int, causal: bool,
               tile: int, device=None) -> Pattern:
    """NSA's compressed branch: query at position t sees compressed token c iff ``c*stride + block - 1 <= t``.

    Key positions here are compressed-token indices, query positions are token positions;
    without ``causal`` every query sees every compressed token.
    """
    lo, hi = _query_blocks(T, q_start, tile, device)
    last = torch.div(hi - block + 1, stride, rounding_mode="floor") if causal else torch.full_like(hi, n_cmp - 1)
    kv = range_blocks(torch.zeros_like(lo), last, n_cmp, 0, tile)
    return Pattern(compressed_rule if causal else None, dict(block=block, stride=stride), tile, tile, kv,
                   q_start, 0)


def selected(kv_blocks: torch.Tensor, block: int, causal: bool, q_start: int) -> Pattern:
    """Per-token block selection (MoBA, NSA): ``kv_blocks[Bi, Hi, T, n]``; causal inside blocks."""
    return Pattern(causal_rule if causal else None, {}, 1, block, kv_blocks, q_start, 0, selective=True)


# ----------------------------------------------------------------------------- grid patterns

def _na_window_start(c: torch.Tensor, n: int, k: int, d: int) -> torch.Tensor:
    """NATTEN window start on one axis: the k dilated positions around c, shifted inside [0, n)."""
    r = c % d
    m = torch.div(n - r - 1, d, rounding_mode="floor") + 1  # length of c's dilation sub-sequence
    st = torch.minimum((torch.div(c, d, rounding_mode="floor") - k // 2).clamp(min=0), m - k)
    return st * d + r


def _na_window(c: torch.Tensor, n, k, d, causal: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(first, last) coordinate of the window of queries at ``c`` on one axis."""
    if causal:
        return c - (k - 1) * d, c
    s = _na_window_start(c, n, k, d)
    return s, s + (k - 1) * d


def neighborhood_rule(i, j, grid, kernel, dilation, causal: Tuple[bool, ...]):
    """Keys inside the query's neighborhood on every axis; see :func:`neighborhood`."""
    m = None
    for a, (ci, cj) in enumerate(zip(unravel(i, grid), unravel(j, grid))):
        lo, hi = _na_window(ci, grid[a], kernel[a], dilation[a], causal[a])
        ok = (cj >= lo) & (cj <= hi) & ((cj - ci) % dilation[a] == 0)
        m = ok if m is None else m & ok
    return m


def neighborhood(T: int, S: int, grid: Sequence[int], kernel: Sequence[int], dilation: Sequence[int],
                 causal: Sequence[bool], block: int, k_start: int = 0, device=None) -> Pattern:
    """NATTEN neighborhood attention on a raster-flattened grid.

    On a non-causal axis a query at coordinate c sees the ``kernel`` positions ``s, s+d, ..``
    (d = dilation) of the window centred on c and shifted inside the axis at the borders (so it
    always sees exactly ``kernel`` of them); on a causal axis it sees ``c, c-d, .., c-(kernel-1)d``
    that exist.  A key is seen if every axis sees it.
    """
    q_start = k_start + S - T
    ndim = len(grid)
    params = dict(grid=tuple(grid), kernel=tuple(kernel), dilation=tuple(dilation), causal=tuple(causal))

    def window(c, a):
        return _na_window(c, grid[a], kernel[a], dilation[a], causal[a])

    # block cover: each query's window is a set of rows (all axes but the last) times one span of
    # the last axis; mark the key blocks of every such flat range with a difference array.
    pos = torch.arange(q_start, q_start + T, device=device)
    coords = unravel(pos, grid)
    base = torch.zeros_like(pos)[:, None]  # [T, R] flat start of each row of the window
    valid = torch.ones_like(base, dtype=torch.bool)
    for a in range(ndim - 1):
        lo, _ = window(coords[a], a)
        rows = lo[:, None] + dilation[a] * torch.arange(kernel[a], device=device)  # [T, k]
        base = (base[:, :, None] + rows[:, None, :] * math.prod(grid[a + 1:])).flatten(1)
        valid = (valid[:, :, None] & (rows >= 0)[:, None, :]).flatten(1)
    lo, hi = window(coords[-1], ndim - 1)
    first, last = k_start // block, (k_start + S - 1) // block
    nkb = last - first + 1
    b_lo = torch.div(base + lo.clamp(min=0)[:, None], block, rounding_mode="floor").clamp(min=first) - first
    b_hi = torch.div(base + hi[:, None], block, rounding_mode="floor").clamp(max=last) - first
    keep = valid & (b_lo <= b_hi)
    row = (torch.div(pos, block, rounding_mode="floor") - q_start // block)[:, None].expand_as(b_lo)
    nqb = int(row[-1, 0]) + 1
    diff = torch.zeros(nqb, nkb + 1, dtype=torch.long, device=device)  # +1 at range start, -1 after end
    for col, sign in ((b_lo, 1), (b_hi + 1, -1)):
        flat = (row * (nkb + 1) + col)[keep]
        diff.view(-1).index_add_(0, flat, torch.full_like(flat, sign))
    table = diff.cumsum(-1)[:, :nkb] > 0
    return Pattern(neighborhood_rule, params, block, block, blocks_from_table(table, first)[None, None],
                   q_start, k_start)


def window_groups(coords: Sequence[torch.Tensor], window: Sequence[int],
                  shift: Sequence[int]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Swin shifted windows in original coordinates: per axis the window id and the index inside it.

    Swin rolls the grid by ``-shift`` and masks pairs that wrapped around; in original coordinates
    that is windows starting at ``shift + m*window`` plus the leftover strips at both borders.
    """
    gid = [torch.div(c + w - s, w, rounding_mode="floor") if s else torch.div(c, w, rounding_mode="floor")
           for c, w, s in zip(coords, window, shift)]
    pos = [(c - s) % w for c, w, s in zip(coords, window, shift)]
    return gid, pos
