"""ViG's locality-aware gated linear attention: a bidirectional GLA blended with a local conv branch.

ViG (Liao et al. 2024, https://arxiv.org/abs/2405.18425)::

    c = SiLU(depthwise 3x3 conv(x))          on the token grid
    o = inner(c)                             bidirectional GLA (``gla``, causal=False), or any mixer
    g = sigmoid(W_g c + b_g)                 locality-aware gate
    y = o * g + RMSNorm(c) * (1 - g)

ViG blends the normalised GLA output with the conv branch before its output projection; here the
inner mixer is a whole ``gla`` layer (projections, its own swish output gate and ``out_proj``) and
the blend comes after it, so any mixer can take its place (``inner=``, ``inner_kwargs=``), along
any scan (``scan=``: the inner mixer runs through :class:`~mmeff.scans.ScannedMixer`).

Parameters: ``k^2 D`` (conv, no bias) + ``D^2 + D`` (gate) + ``D`` (norm) + the inner mixer's.
The grid ``(H, W)`` is given at construction, by :meth:`ViGMixer.set_grid` or per call
(``forward(x, grid=...)``); without one the L tokens are one row.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_positive
from ..layers import RmsNorm
from ..scans import ScannedMixer, check_grid
from .base import Mixer, create_mixer, register_mixer


@register_mixer("vig")
class ViGMixer(Mixer):
    """Locality-aware gating around a bidirectional inner mixer (see the module docstring).

    Args:
        dim: width D.
        causal: must be False.
        grid: default token grid ``(H, W)``.
        inner, inner_kwargs: the inner mixer (``'gla'``, built with ``causal=False``) and its
            arguments (ViG-T: 3 heads, ``expand_k`` 0.5, ``expand_v`` 1).
        scan, scan_kwargs: run the inner mixer along a 2D scan (None: raster order).
        conv_size: kernel of the depthwise conv (3).
        conv_bias: bias of the conv.
        norm_eps: epsilon of the conv branch's RMSNorm.
    """

    def __init__(self, dim: int, *, causal: bool = False, grid: Optional[Sequence[int]] = None,
                 inner: str = "gla", inner_kwargs: Optional[dict] = None, scan: Optional[str] = None,
                 scan_kwargs: Optional[dict] = None, conv_size: int = 3, conv_bias: bool = False,
                 norm_eps: float = 1e-5, device=None, dtype=None) -> None:
        if causal:
            raise ValueError("the ViG mixer convolves the 2D grid and is bidirectional; causal must be "
                             "False, got True")
        super().__init__(dim, causal=False)
        check_positive("conv_size", conv_size)
        if conv_size % 2 == 0:
            raise ValueError(f"conv_size must be odd (a centred conv), got {conv_size}")
        fk = dict(device=device, dtype=dtype)
        self.grid: Optional[Tuple[int, int]] = None if grid is None else check_grid(grid, 2)
        self.conv = nn.Conv2d(dim, dim, conv_size, padding=conv_size // 2, groups=dim, bias=conv_bias, **fk)
        kw = {"causal": False, **(inner_kwargs or {})}
        self.inner = create_mixer(inner, dim, **{k: v for k, v in fk.items() if v is not None}, **kw)
        if scan is not None:
            self.inner = ScannedMixer(self.inner, scan, self.grid or (1, 1), scan_kwargs=scan_kwargs)
        self.gate = nn.Linear(dim, dim, **fk)
        self.norm = RmsNorm(dim, eps=norm_eps, **fk)

    def set_grid(self, grid: Sequence[int]) -> None:
        """Set the default token grid ``(H, W)``."""
        self.grid = check_grid(grid, 2)

    def forward(self, x: torch.Tensor, *, grid: Optional[Sequence[int]] = None) -> torch.Tensor:
        """``x[B, L, D] -> [B, L, D]``; ``grid`` (``H * W == L``) overrides the stored grid."""
        self._check_input(x)
        L = x.shape[1]
        grid = check_grid(grid, 2) if grid is not None else (self.grid or (1, L))
        if grid[0] * grid[1] != L:
            raise ValueError(f"grid {grid} has {grid[0] * grid[1]} tokens but x has L={L}")
        c = rearrange(x, "b (h w) d -> b d h w", h=grid[0])
        c = F.silu(rearrange(self.conv(c), "b d h w -> b (h w) d"))  # [B, L, D]
        o = self.inner(c, grid=grid) if isinstance(self.inner, ScannedMixer) else self.inner(c)
        g = torch.sigmoid(self.gate(c))
        return o * g + self.norm(c) * (1 - g)
