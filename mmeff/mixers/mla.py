"""Multi-head latent attention (MLA), DeepSeek-V2 (https://arxiv.org/abs/2405.04434, sec. 2.1).

Keys and values are rebuilt from one low-rank latent ``c_kv = RMSNorm(W_dkv x)`` (``kv_lora_rank``
wide) by per-head up-projections; position goes through a separate "decoupled" RoPE key
``k_rope = RoPE(W_kr x)`` shared by all heads, concatenated to each head's content key (and a
matching RoPE part of each query).  Queries optionally go through their own low-rank bottleneck
(``q_lora_rank``).  The decoding cache holds only ``c_kv`` and ``k_rope``: ``kv_lora_rank +
rope_head_dim`` numbers per token instead of ``2 * H * head_dim``.  ``step`` uses the absorbed form
of the paper: the key up-projection is folded into the query and the value up-projection applied
after attending over the latents, so keys and values are never expanded while decoding.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from einops import rearrange
from timm.layers import RmsNorm
from torch import nn

from .._utils import check_positive
from ..layers.rope import check_grid
from .attention import make_rope, sdpa
from .base import Mixer, register_mixer


@register_mixer("mla")
class MultiHeadLatentAttention(Mixer):
    """Multi-head latent attention.

    Parameters (no biases, as DeepSeek-V2): ``W_q`` (or ``W_dq`` + RMSNorm + ``W_uq``) to
    ``H (d + d_r)``, ``W_dkv`` to ``kv_lora_rank + d_r``, RMSNorm(kv_lora_rank), ``W_ukv`` to
    ``H (d + d_v)``, ``W_o`` from ``H d_v``.  DeepSeek-V2 uses H=128, d=d_v=128, d_r=64,
    kv_lora_rank=512, q_lora_rank=1536; the defaults keep those ratios at any width.

    Args:
        num_heads: H.
        head_dim: d, the content (non-RoPE) part of a query/key head; default ``dim // num_heads``.
        rope_head_dim: d_r, the decoupled RoPE part; default ``head_dim // 2``.
        v_head_dim: d_v; default ``head_dim``.
        kv_lora_rank: latent width; default ``4 * head_dim``.
        q_lora_rank: query bottleneck width, or None for a full-rank query projection.
        rope: '1d' (sequence) or '2d' / '3d' (axial over ``grid``) for the decoupled RoPE part.
        rope_base: RoPE frequency base.
        grid: token grid for 2D/3D RoPE (also ``set_grid`` / ``forward(grid=)``).
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 8,
                 head_dim: Optional[int] = None, rope_head_dim: Optional[int] = None,
                 v_head_dim: Optional[int] = None, kv_lora_rank: Optional[int] = None,
                 q_lora_rank: Optional[int] = None, rope: str = "1d", rope_base: float = 10000.0,
                 grid: Optional[Sequence[int]] = None, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("num_heads", num_heads)
        d = dim // num_heads if head_dim is None else head_dim
        dr = d // 2 if rope_head_dim is None else rope_head_dim
        dv = d if v_head_dim is None else v_head_dim
        r = 4 * d if kv_lora_rank is None else kv_lora_rank
        for name, val in (("head_dim", d), ("rope_head_dim", dr), ("v_head_dim", dv), ("kv_lora_rank", r)):
            check_positive(name, val)
        if rope is None:
            raise ValueError("MLA needs its decoupled RoPE key: rope must be '1d', '2d' or '3d', got None")
        self.num_heads, self.head_dim, self.rope_head_dim, self.v_head_dim = num_heads, d, dr, dv
        self.kv_lora_rank, self.q_lora_rank = r, q_lora_rank
        self.scale = (d + dr) ** -0.5
        fk = dict(device=device, dtype=dtype)
        if q_lora_rank is None:
            self.q_proj = nn.Linear(dim, num_heads * (d + dr), bias=False, **fk)
        else:
            check_positive("q_lora_rank", q_lora_rank)
            self.q_proj = nn.Sequential(nn.Linear(dim, q_lora_rank, bias=False, **fk),
                                        RmsNorm(q_lora_rank, **fk),
                                        nn.Linear(q_lora_rank, num_heads * (d + dr), bias=False, **fk))
        self.kv_down = nn.Linear(dim, r + dr, bias=False, **fk)  # W_dkv and W_kr together
        self.kv_norm = RmsNorm(r, **fk)
        self.kv_up = nn.Linear(r, num_heads * (d + dv), bias=False, **fk)  # W_uk and W_uv together
        self.proj = nn.Linear(num_heads * dv, dim, bias=False, **fk)
        self.rope = make_rope(rope, dr, rope_base)
        self.grid = check_grid(grid) if grid is not None else None

    def set_grid(self, grid: Sequence[int]) -> None:
        """Set the token grid used by 2D/3D RoPE."""
        self.grid = check_grid(grid)

    def _latent(self, x: torch.Tensor, start: int, grid) -> Tuple[torch.Tensor, ...]:
        """Rotated queries (content, rope parts), normed latent ``c_kv`` and rotated ``k_rope``."""
        d, dr = self.head_dim, self.rope_head_dim
        q = rearrange(self.q_proj(x), "b l (h d) -> b l h d", h=self.num_heads)
        q_nope, q_rope = q.split([d, dr], dim=-1)  # [B, L, H, d], [B, L, H, dr]
        c_kv, k_rope = self.kv_down(x).split([self.kv_lora_rank, dr], dim=-1)
        q_rope = self.rope.rotate(q_rope, start, grid)
        k_rope = self.rope.rotate(k_rope[:, :, None], start, grid)[:, :, 0]  # [B, L, dr]
        return q_nope, q_rope, self.kv_norm(c_kv), k_rope

    def _up(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-head up-projections ``W_uk[H, d, r]`` and ``W_uv[H, d_v, r]``."""
        w = rearrange(self.kv_up.weight, "(h e) r -> h e r", h=self.num_heads)
        return w.split([self.head_dim, self.v_head_dim], dim=1)

    def _check_grid(self, grid):
        if self.rope.ndim > 1 and (grid is None or len(grid) != self.rope.ndim):
            raise ValueError(f"MLA with {self.rope.ndim}-D RoPE needs a {self.rope.ndim}-D grid, got {grid!r}")

    def forward(self, x: torch.Tensor, *, grid: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Training / prefill form: expand per-head keys and values from the latent."""
        self._check_input(x)
        grid = check_grid(grid) if grid is not None else self.grid
        self._check_grid(grid)
        q_nope, q_rope, c_kv, k_rope = self._latent(x, 0, grid)
        kv = rearrange(self.kv_up(c_kv), "b l (h e) -> b l h e", h=self.num_heads)
        k_nope, v = kv.split([self.head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, :, None].expand(-1, -1, self.num_heads, -1)], dim=-1)
        o = sdpa(torch.cat([q_nope, q_rope], dim=-1), k, v, self.causal, scale=self.scale)
        return self.proj(rearrange(o, "b l h d -> b l (h d)"))

    def init_state(self, batch: int, device=None, dtype=None) -> Dict:
        """Empty latent cache ``c_kv[B, 0, kv_lora_rank]``, ``k_rope[B, 0, rope_head_dim]``, ``pos``."""
        self._require_causal("init_state")
        dtype = dtype or self.kv_down.weight.dtype
        return {"c_kv": torch.zeros(batch, 0, self.kv_lora_rank, device=device, dtype=dtype),
                "k_rope": torch.zeros(batch, 0, self.rope_head_dim, device=device, dtype=dtype),
                "pos": 0}

    def step(self, x: torch.Tensor, state: Dict) -> Tuple[torch.Tensor, Dict]:
        """Absorbed decoding: attend over the cached latents as one shared (MQA-like) head."""
        self._require_causal("step")
        self._check_input(x)
        self._check_grid(self.grid)
        pos = state["pos"]
        q_nope, q_rope, c_kv, k_rope = self._latent(x, pos, self.grid)
        c_kv = torch.cat([state["c_kv"].to(c_kv.dtype), c_kv], dim=1)  # [B, S, r]
        k_rope = torch.cat([state["k_rope"].to(k_rope.dtype), k_rope], dim=1)  # [B, S, dr]
        w_uk, w_uv = self._up()
        q_lat = torch.einsum("blhd,hdr->blhr", q_nope, w_uk)  # W_uk absorbed into the query
        q = torch.cat([q_lat, q_rope], dim=-1)  # [B, l, H, r + dr]
        k = torch.cat([c_kv, k_rope], dim=-1)[:, :, None]  # [B, S, 1, r + dr]
        o_lat = sdpa(q, k, c_kv[:, :, None], True, scale=self.scale)  # [B, l, H, r]
        o = torch.einsum("blhr,hvr->blhv", o_lat, w_uv)  # W_uv after attending
        y = self.proj(rearrange(o, "b l h d -> b l (h d)"))
        return y, {"c_kv": c_kv, "k_rope": k_rope, "pos": pos + x.shape[1]}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"rope_head_dim={self.rope_head_dim}, kv_lora_rank={self.kv_lora_rank}, "
                f"q_lora_rank={self.q_lora_rank}")
