"""Patch embeddings that take any input size the patch divides, with clear errors otherwise."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from einops import rearrange
from timm.layers import resample_abs_pos_embed
from torch import nn


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class PatchEmbed(nn.Module):
    """Image ``[B, C, H, W]`` -> tokens ``[B, (H/p)*(W/p), D]`` by a strided convolution.

    Args:
        patch_size: int or (ph, pw).
        in_chans: expected input channels.
        embed_dim: output width D.
        norm_layer: optional norm on the tokens.
    """

    def __init__(self, patch_size=16, in_chans: int = 3, embed_dim: int = 768,
                 norm_layer=None, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias,
                              device=device, dtype=dtype)
        self.norm = norm_layer(embed_dim, device=device, dtype=dtype) if norm_layer else nn.Identity()

    def grid_size(self, img_size: Sequence[int]) -> Tuple[int, int]:
        """Token grid (H/p, W/p) for an input of spatial size ``img_size`` (checked)."""
        h, w = img_size
        ph, pw = self.patch_size
        if h % ph or w % pw:
            raise ValueError(f"input size {h}x{w} must be divisible by the patch size {ph}x{pw}")
        return h // ph, w // pw

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input [B, {self.in_chans}, H, W], got {tuple(x.shape)}")
        grid = self.grid_size(x.shape[-2:])
        x = rearrange(self.proj(x), "b d h w -> b (h w) d")
        return self.norm(x), grid


def resample_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int], base_grid: Tuple[int, int],
                       num_prefix_tokens: int = 0) -> torch.Tensor:
    """Bicubic resample of a ``[1, prefix + h*w, D]`` position table to ``grid`` (no-op if equal)."""
    if tuple(grid) == tuple(base_grid):
        return pos_embed
    return resample_abs_pos_embed(pos_embed, list(grid), list(base_grid),
                                  num_prefix_tokens=num_prefix_tokens)
