"""Sparse and local softmax attention: static patterns and dynamic block selection.

Every op takes ``q[B, T, H, D]``, ``k, v[B, S, Hk, D]`` (GQA: Hk divides H) and returns
``o[B, T, H, Dv]`` in q's dtype (there is no recurrent state; streaming keeps a KV cache).  With
``causal`` the queries are the *last* T of the S key positions (a chunk of new tokens against its
cache); without it T == S.  Each op equals dense SDPA with the pattern's explicit boolean mask.

Implementations, chosen by :func:`mmeff.ops.dispatch` (which says once which one ran):

- ``naive`` (naive.py): dense fp32 SDPA with the explicit mask, the reference;
- ``chunk`` (gather.py): gathers only the kept key blocks of each query block, batched matmuls,
  compute and memory proportional to the kept blocks; the path on CPU;
- ``triton`` (flex.py): FlexAttention with a BlockMask, compiled (CUDA with Triton only).

Window attention (Swin) has its own fast path (window.py: partition into windows and SDPA).

Papers: Longformer https://arxiv.org/abs/2004.05150, BigBird https://arxiv.org/abs/2007.14062,
Sparse Transformer https://arxiv.org/abs/1904.10509, Samba https://arxiv.org/abs/2406.07522,
NATTEN / NAT https://arxiv.org/abs/2204.07143 and DiNAT https://arxiv.org/abs/2209.15001,
Swin https://arxiv.org/abs/2103.14030, Video Swin https://arxiv.org/abs/2106.13230,
MoBA https://arxiv.org/abs/2502.13189, NSA https://arxiv.org/abs/2502.11089.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from ..._utils import check_positive
from .._dispatch import dispatch, register_impl
from . import patterns
from .flex import flex_attention_path
from .gather import gather_attention
from .naive import naive_attention
from .patterns import cdiv, check_grid, per_axis
from .select import moba_select, nsa_select
from .window import window_attention_naive, window_attention_partition

IntOrTuple = Union[int, Sequence[int]]

_PATTERN_OPS = ("sliding_window_attention", "neighborhood_attention", "block_sparse_attention",
                "selected_attention", "compressed_attention")
for _name in _PATTERN_OPS:
    register_impl(_name, "naive")(naive_attention)
    register_impl(_name, "chunk")(gather_attention)
    register_impl(_name, "triton")(flex_attention_path)
register_impl("window_attention", "naive")(window_attention_naive)
register_impl("window_attention", "chunk")(window_attention_partition)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               causal: Optional[bool]) -> Tuple[int, int]:
    """Validate ``q[B, T, H, D]``, ``k[B, S, Hk, D]``, ``v[B, S, Hk, Dv]``; return (T, S).

    ``causal=True`` needs S >= T (queries are the last T keys), False needs S == T, None neither.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, T, H, D]; got shapes {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, T, H, D = q.shape
    if k.shape[0] != B or k.shape[3] != D or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k must be [B={B}, S, Hk, D={D}] and v [B, S, Hk, Dv] with the same S, Hk; "
                         f"got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if H % k.shape[2]:
        raise ValueError(f"the number of query heads ({H}) must be divisible by the key heads ({k.shape[2]})")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    S = k.shape[1]
    if causal is True and S < T:
        raise ValueError(f"causal attention needs at least as many keys as queries, got T={T}, S={S}")
    if causal is False and S != T:
        raise ValueError(f"non-causal attention needs S == T, got T={T}, S={S}")
    return T, S


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                             causal: bool = True, scale: Optional[float] = None,
                             block_size: int = 64) -> torch.Tensor:
    """Sliding-window attention (Longformer, Mistral, Samba): query i sees keys j with ``|i-j| < window``.

    Causal: the ``window`` keys ``i-window+1 .. i``; non-causal: the symmetric ``2*window-1``.
    ``block_size`` is the gather path's tile (it does not change the result).
    """
    check_positive("window", window)
    check_positive("block_size", block_size)
    T, S = _check_qkv(q, k, v, causal)
    pat = patterns.sliding_window(T, S, window, causal, block_size, device=q.device)
    return dispatch("sliding_window_attention", q.device)(q, k, v, pat, scale)


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int],
                           kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
                           causal: Union[bool, Sequence[bool]] = False, scale: Optional[float] = None,
                           k_start: int = 0, block_size: int = 64) -> torch.Tensor:
    """Neighborhood attention on a 2D/3D grid (NATTEN semantics), tokens in raster order.

    Per axis: ``kernel_size`` positions spaced by ``dilation``; on a non-causal axis the window is
    centred on the query and shifted inside the grid at the borders, so each query sees exactly
    ``prod(kernel_size)`` keys (needs ``kernel_size * dilation <= grid`` on that axis); a causal axis
    (e.g. time of a video) sees the query's position and the ``kernel_size - 1`` before it.

    Args:
        grid: (H, W) or (T, H, W); the tokens are its raster order (``N = prod(grid)``).
        causal: a bool for all axes or one per axis.  When every axis is causal the op also streams:
            queries are the last T of the keys, and ``k[:, 0]`` sits at absolute position ``k_start``
            (a cache trimmed from the left); the first grid axis may then run past ``grid[0]``.
    """
    grid = check_grid(grid)
    nd = len(grid)
    kernel = per_axis("kernel_size", kernel_size, nd)
    dil = per_axis("dilation", dilation, nd)
    causal_axes = (causal,) * nd if isinstance(causal, bool) else tuple(causal)
    if len(causal_axes) != nd or not all(isinstance(c, bool) for c in causal_axes):
        raise ValueError(f"causal must be a bool or {nd} bools, got {causal!r}")
    for a in range(nd):
        if not causal_axes[a] and kernel[a] * dil[a] > grid[a]:
            raise ValueError(f"kernel_size * dilation ({kernel[a]} * {dil[a]}) must be <= grid[{a}] "
                             f"({grid[a]}) on a non-causal axis")
    check_positive("block_size", block_size)
    check_positive("k_start", k_start, allow_zero=True)
    streaming = all(causal_axes)
    T, S = _check_qkv(q, k, v, streaming)
    if not streaming and (T != math.prod(grid) or k_start):
        raise ValueError(f"grid {grid} has {math.prod(grid)} tokens but q has T={T} (k_start={k_start}); "
                         "only a fully causal neighborhood streams")
    pat = patterns.neighborhood(T, S, grid, kernel, dil, causal_axes, block_size, k_start, q.device)
    return dispatch("neighborhood_attention", q.device)(q, k, v, pat, scale)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int],
                     window_size: IntOrTuple, shift_size: IntOrTuple = 0,
                     bias: Optional[torch.Tensor] = None, scale: Optional[float] = None) -> torch.Tensor:
    """Swin / Video-Swin attention inside (shifted) windows of a 2D/3D grid, tokens in raster order.

    Args:
        window_size: window per axis; it must divide the grid (no padding: a clear error instead).
        shift_size: cyclic shift per axis (``0 <= shift < window``), masked as in Swin.
        bias: optional ``[H, Wn, Wn]`` additive bias between positions inside a window
            (Wn = prod(window_size)), e.g. Swin's relative position bias.
    """
    grid = check_grid(grid)
    nd = len(grid)
    window = per_axis("window_size", window_size, nd)
    shift = per_axis("shift_size", shift_size, nd, minimum=0)
    for a in range(nd):
        if grid[a] % window[a]:
            raise ValueError(f"window_size {window} must divide grid {grid} (axis {a}: "
                             f"{grid[a]} % {window[a]} != 0)")
        if shift[a] >= window[a]:
            raise ValueError(f"shift_size {shift} must be smaller than window_size {window} on every axis")
    T, _ = _check_qkv(q, k, v, False)
    if T != math.prod(grid):
        raise ValueError(f"grid {grid} has {math.prod(grid)} tokens but q has T={T}")
    wn = math.prod(window)
    if bias is not None and tuple(bias.shape) != (q.shape[2], wn, wn):
        raise ValueError(f"bias must be [H={q.shape[2]}, {wn}, {wn}], got {tuple(bias.shape)}")
    return dispatch("window_attention", q.device)(q, k, v, grid, window, shift, bias, scale)


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int,
                           num_local_blocks: int = 1, num_global_tokens: int = 0, stride: int = 0,
                           causal: bool = True, scale: Optional[float] = None) -> torch.Tensor:
    """Static block-sparse attention (BigBird / Longformer / Sparse Transformer family).

    With blocks of ``block_size`` tokens, query block a sees key block b when ``|a-b| <=
    num_local_blocks`` (local), when ``stride > 0`` and ``(a-b) % stride == 0`` (strided/dilated
    blocks), and everyone sees the first ``num_global_tokens`` tokens, which (non-causal) see all.
    """
    check_positive("block_size", block_size)
    check_positive("num_local_blocks", num_local_blocks, allow_zero=True)
    check_positive("num_global_tokens", num_global_tokens, allow_zero=True)
    check_positive("stride", stride, allow_zero=True)
    T, S = _check_qkv(q, k, v, causal)
    pat = patterns.block_sparse(T, S, block_size, num_local_blocks, num_global_tokens, stride,
                                causal, q.device)
    return dispatch("block_sparse_attention", q.device)(q, k, v, pat, scale)


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_indices: torch.Tensor,
                       block_size: int, causal: bool = True, scale: Optional[float] = None) -> torch.Tensor:
    """Attention of each query over its own selected key blocks (MoBA / NSA selected branch).

    Args:
        block_indices: ``[B, Hs, T, n]`` key-block ids per query (-1 = none), Hs in {1, Hk, H}
            (Hk: shared by the query heads of a GQA group, as in NSA); duplicates are not allowed.
        causal: additionally mask keys after the query inside the selected blocks.
    """
    check_positive("block_size", block_size)
    T, S = _check_qkv(q, k, v, causal)
    B, H, Hk = q.shape[0], q.shape[2], k.shape[2]
    bi = block_indices
    if (bi.dim() != 4 or bi.shape[0] not in (1, B) or bi.shape[1] not in (1, Hk, H)
            or bi.shape[2] != T or bi.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"block_indices must be an integer [B, Hs, T={T}, n] tensor with Hs in "
                         f"(1, {Hk}, {H}), got {tuple(bi.shape)} {bi.dtype}")
    if bi.numel() and int(bi.max()) >= cdiv(S, block_size):
        raise ValueError(f"block_indices has block {int(bi.max())} but S={S} keys have only "
                         f"{cdiv(S, block_size)} blocks of {block_size}")
    pat = patterns.selected(bi.long(), block_size, causal, S - T)
    return dispatch("selected_attention", q.device)(q, k, v, pat, scale)


def moba_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, top_k: int,
                   causal: bool = True, scale: Optional[float] = None) -> torch.Tensor:
    """MoBA: each query attends to its ``top_k`` key blocks by ``q . mean(K_block)`` (own block always).

    ``top_k`` counts the own block and must not exceed the number of key blocks.
    """
    check_positive("block_size", block_size)
    check_positive("top_k", top_k)
    _, S = _check_qkv(q, k, v, causal)
    if top_k > cdiv(S, block_size):
        raise ValueError(f"top_k ({top_k}) must be <= the number of key blocks ({cdiv(S, block_size)} "
                         f"for S={S}, block_size={block_size})")
    idx = moba_select(q, k, block_size, top_k, causal)
    return selected_attention(q, k, v, idx, block_size, causal, scale)


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, block_size: int,
                         stride: int, q_start: int = 0, causal: bool = True,
                         scale: Optional[float] = None, tile: int = 64) -> torch.Tensor:
    """NSA's compressed branch: attention over block summaries ``k_cmp, v_cmp[B, nC, Hk, D]``.

    Compressed token c summarises keys ``[c*stride, c*stride + block_size)``; with ``causal`` the
    query at position ``q_start + t`` sees it once the block is complete (``c*stride + block_size - 1
    <= q_start + t``); queries that see none output zeros.
    """
    for name, val in (("block_size", block_size), ("stride", stride), ("tile", tile)):
        check_positive(name, val)
    check_positive("q_start", q_start, allow_zero=True)
    T, nc = _check_qkv(q, k_cmp, v_cmp, None)
    pat = patterns.compressed(T, nc, block_size, stride, q_start, causal, tile, q.device)
    return dispatch("compressed_attention", q.device)(q, k_cmp, v_cmp, pat, scale)


__all__ = ["sliding_window_attention", "neighborhood_attention", "window_attention",
           "block_sparse_attention", "selected_attention", "moba_attention", "moba_select",
           "compressed_attention", "nsa_select"]
