"""Native Sparse Attention (NSA), Yuan et al. 2025 (https://arxiv.org/abs/2502.11089).

Three attention branches over the same queries, each with its own keys and values (sec. 3.3), mixed
by learned sigmoid gates per head: ``o = g_cmp * o_cmp + g_slc * o_slc + g_win * o_win``.

- compressed: blocks of ``compress_block`` keys taken every ``compress_stride`` tokens are
  summarised by a learned MLP (with an intra-block position embedding) into one key / value each;
  a query sees the blocks that are complete;
- selected: the compressed attention probabilities score blocks of ``select_block`` keys (summed
  over the heads of a GQA group); each query attends to its ``num_select`` best blocks (the
  ``num_init_blocks`` first and ``num_local_blocks`` most recent always among them);
- sliding window: the last ``window`` keys.

``step`` keeps: the compressed keys so far plus the raw tail of the incomplete block, the full
selected-branch KV cache, and the last ``window - 1`` keys of the window branch.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from einops import rearrange
from torch import nn

from .._utils import check_divisible, check_positive
from ..ops.sparse_attention import (compressed_attention, nsa_select, selected_attention,
                                    sliding_window_attention)
from .attention import make_rope
from .base import Mixer, register_mixer

BRANCHES = ("cmp", "slc", "win")


class BlockCompressor(nn.Module):
    """NSA's phi: ``[block, d]`` keys (+ position embedding) flattened, then a linear map to ``d``."""

    def __init__(self, head_dim: int, block: int, stride: int, device=None, dtype=None) -> None:
        super().__init__()
        self.block, self.stride = block, stride
        self.pos = nn.Parameter(torch.zeros(block, head_dim, device=device, dtype=dtype))
        self.proj = nn.Linear(block * head_dim, head_dim, device=device, dtype=dtype)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[B, S, Hk, d]`` -> ``[B, nC, Hk, d]`` for the complete blocks starting at 0, stride, ..."""
        if x.shape[1] < self.block:
            return x.new_zeros(x.shape[0], 0, *x.shape[2:])
        blocks = x.unfold(1, self.block, self.stride)  # [B, nC, Hk, d, block]
        blocks = rearrange(blocks, "b c h d l -> b c h l d") + self.pos
        return self.proj(rearrange(blocks, "b c h l d -> b c h (l d)"))

    def count(self, length: int) -> int:
        """Complete blocks among ``length`` keys."""
        return 0 if length < self.block else (length - self.block) // self.stride + 1


@register_mixer("nsa")
class NativeSparseAttention(Mixer):
    """Native Sparse Attention (paper defaults: l=32, d=16, l'=64, n=16, w=512, 1 initial + 2 local).

    Parameters: ``q`` ``D x H d``; one ``kv`` projection ``D x 3 * 2 Hk d`` (keys and values of
    the three branches); two :class:`BlockCompressor` (keys, values); the gate ``D x 3H``; ``proj``.

    Args:
        num_heads, num_kv_heads: query heads and key/value heads (GQA groups share selections).
        qkv_bias: bias on the q and kv projections.
        rope: None or '1d', applied to queries and all keys (before compression).
        compress_block, compress_stride: l and d of the compressed branch (d divides l).
        select_block: l' (a multiple of d); num_select: n blocks per query.
        num_init_blocks, num_local_blocks: always-selected first / most recent blocks.
        window: w of the sliding branch.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 8,
                 num_kv_heads: Optional[int] = None, qkv_bias: bool = False, rope: Optional[str] = None,
                 rope_base: float = 10000.0, compress_block: int = 32, compress_stride: int = 16,
                 select_block: int = 64, num_select: int = 16, num_init_blocks: int = 1,
                 num_local_blocks: int = 2, window: int = 512, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        hk = num_heads if num_kv_heads is None else num_kv_heads
        check_positive("num_kv_heads", hk)
        check_divisible("num_heads", num_heads, "num_kv_heads", hk)
        for name, val in (("compress_block", compress_block), ("compress_stride", compress_stride),
                          ("select_block", select_block), ("num_select", num_select), ("window", window)):
            check_positive(name, val)
        check_positive("num_init_blocks", num_init_blocks, allow_zero=True)
        check_positive("num_local_blocks", num_local_blocks)
        check_divisible("compress_block", compress_block, "compress_stride", compress_stride)
        check_divisible("select_block", select_block, "compress_stride", compress_stride)
        if num_select < num_init_blocks + num_local_blocks:
            raise ValueError(f"num_select ({num_select}) must be >= num_init_blocks + num_local_blocks "
                             f"({num_init_blocks} + {num_local_blocks})")
        if rope not in (None, "1d"):
            raise ValueError(f"NSA supports rope=None or '1d', got {rope!r}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, hk, dim // num_heads
        self.compress_block, self.compress_stride = compress_block, compress_stride
        self.select_block, self.num_select, self.window = select_block, num_select, window
        self.num_init_blocks, self.num_local_blocks = num_init_blocks, num_local_blocks
        d, fk = self.head_dim, dict(device=device, dtype=dtype)
        self.q = nn.Linear(dim, num_heads * d, bias=qkv_bias, **fk)
        self.kv = nn.Linear(dim, 6 * hk * d, bias=qkv_bias, **fk)
        self.compress_k = BlockCompressor(d, compress_block, compress_stride, **fk)
        self.compress_v = BlockCompressor(d, compress_block, compress_stride, **fk)
        self.gate = nn.Linear(dim, 3 * num_heads, **fk)
        self.proj = nn.Linear(num_heads * d, dim, **fk)
        self.rope = make_rope(rope, d, rope_base)

    def _project(self, x: torch.Tensor, start: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Queries ``[B, L, H, d]`` and the six branch keys/values ``[B, L, Hk, d]`` (RoPE applied)."""
        q = rearrange(self.q(x), "b l (h d) -> b l h d", h=self.num_heads)
        kv = rearrange(self.kv(x), "b l (n h d) -> n b l h d", n=6, h=self.num_kv_heads)
        kv = {f"{t}_{br}": kv[2 * i + j] for i, br in enumerate(BRANCHES) for j, t in enumerate("kv")}
        if self.rope is not None:
            q = self.rope.rotate(q, start)
            for br in BRANCHES:
                kv[f"k_{br}"] = self.rope.rotate(kv[f"k_{br}"], start)
        return q, kv

    def _mix(self, x: torch.Tensor, q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor,
             k_slc: torch.Tensor, v_slc: torch.Tensor, k_win: torch.Tensor, v_win: torch.Tensor,
             q_start: int) -> torch.Tensor:
        """The three branches and the gates; ``q`` holds positions ``q_start ..``."""
        S = k_slc.shape[1]
        if k_cmp.shape[1]:
            o_cmp = compressed_attention(q, k_cmp, v_cmp, self.compress_block, self.compress_stride,
                                         q_start=q_start, causal=self.causal)
        else:  # no complete block yet
            o_cmp = torch.zeros_like(q)
        idx = nsa_select(q, k_cmp, S, self.compress_block, self.compress_stride, self.select_block,
                         self.num_select, num_init=self.num_init_blocks, num_local=self.num_local_blocks,
                         causal=self.causal, q_start=q_start)
        o_slc = selected_attention(q, k_slc, v_slc, idx, self.select_block, self.causal)
        o_win = sliding_window_attention(q, k_win, v_win, self.window, self.causal)
        g = rearrange(torch.sigmoid(self.gate(x)), "b l (h n) -> n b l h 1", n=3)
        o = g[0] * o_cmp + g[1] * o_slc + g[2] * o_win  # [B, L, H, d]
        return self.proj(rearrange(o, "b l h d -> b l (h d)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        q, kv = self._project(x, 0)
        k_cmp, v_cmp = self.compress_k(kv["k_cmp"]), self.compress_v(kv["v_cmp"])
        return self._mix(x, q, k_cmp, v_cmp, kv["k_slc"], kv["v_slc"], kv["k_win"], kv["v_win"], 0)

    def init_state(self, batch: int, device=None, dtype=None) -> Dict:
        """Empty caches: compressed ``k_cmp/v_cmp``, raw tails ``k_tail/v_tail``, full ``k_slc/v_slc``,
        window ``k_win/v_win`` (all ``[B, 0, Hk, d]``) and ``pos``."""
        self._require_causal("init_state")
        dtype = dtype or self.q.weight.dtype
        empty = torch.zeros(batch, 0, self.num_kv_heads, self.head_dim, device=device, dtype=dtype)
        names = ("k_cmp", "v_cmp", "k_tail", "v_tail", "k_slc", "v_slc", "k_win", "v_win")
        return {**{n: empty for n in names}, "pos": 0}

    def step(self, x: torch.Tensor, state: Dict) -> Tuple[torch.Tensor, Dict]:
        self._require_causal("step")
        self._check_input(x)
        pos = state["pos"]
        q, kv = self._project(x, pos)
        new = {n: torch.cat([state[n].to(kv[n].dtype), kv[n]], dim=1) for n in ("k_slc", "v_slc", "k_win", "v_win")}
        # compressed branch: the tail starts at the first incomplete block (n_cmp * stride)
        n_done = self.compress_k.count(state["k_tail"].shape[1] + x.shape[1])
        for t, comp in (("k", self.compress_k), ("v", self.compress_v)):
            tail = torch.cat([state[f"{t}_tail"].to(kv[f"{t}_cmp"].dtype), kv[f"{t}_cmp"]], dim=1)
            new[f"{t}_cmp"] = torch.cat([state[f"{t}_cmp"].to(tail.dtype), comp(tail)], dim=1)
            new[f"{t}_tail"] = tail[:, n_done * self.compress_stride:]
        y = self._mix(x, q, new["k_cmp"], new["v_cmp"], new["k_slc"], new["v_slc"], new["k_win"],
                      new["v_win"], pos)
        keep = self.window - 1
        new["k_win"], new["v_win"] = (new[n][:, max(new[n].shape[1] - keep, 0):] for n in ("k_win", "v_win"))
        return y, {**new, "pos": pos + x.shape[1]}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
                f"compress={self.compress_block}/{self.compress_stride}, select={self.select_block}x"
                f"{self.num_select}, window={self.window}")
