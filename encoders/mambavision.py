"""MambaVision: a hybrid of conv stages and stages of Mamba-style mixer blocks then attention blocks.

MambaVision (Hatamizadeh, Kautz 2024, https://arxiv.org/abs/2407.08083): a stride-4 conv stem
(conv 3x3/2 + BN + ReLU, twice), stages 1-2 of residual conv blocks (conv 3x3 + BN + GELU + conv
3x3 + BN), stages 3-4 whose first half are mixer blocks (``mambavision``: a selective scan on half
the channels beside a symmetric conv branch, concatenated) and second half self-attention blocks,
each block LN -> mixer -> LN -> MLP (ratio 4); downsampling by a conv 3x3/2 doubling the width; a
final BatchNorm, average pooling and a linear head.  In stages 3-4 the tokens are processed per
window (14x14 in stage 3, 7x7 in stage 4: the whole grid at 224x224; windows are clipped to the
grid, and the grid is zero-padded to a multiple of the window as in MambaVision).  T: width 80,
depths (1, 3, 8, 4), heads (2, 4, 8, 16); 31.8M parameters.

Overrides: ``mixer=`` / ``mixer_kwargs=`` replace the mixer of the mixer blocks (the attention
blocks stay), ``scan=`` orders the tokens of each window for them.  Any input size divisible by 32.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from timm.layers import DropPath
from timm.models import generate_default_cfgs
from torch import nn

from mmeff._registry import register_model
from mmeff.blocks import Block

from ._vision import (HierarchicalEncoder, MixerSpec, Stage, build_mixer, create_encoder, layer_scan_kwargs,
                      vision_cfg)


class ConvBlock(nn.Module):
    """Residual conv block of stages 1-2: ``x + drop_path(gamma * BN(conv(GELU(BN(conv(x))))))``."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: Optional[float] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1, **fk)
        self.norm1 = nn.BatchNorm2d(dim, **fk)
        self.act = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1, **fk)
        self.norm2 = nn.BatchNorm2d(dim, **fk)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), layer_scale, **fk)) if layer_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        y = self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y)


class MambaVision(HierarchicalEncoder):
    """Conv stages, then stages of mixer blocks followed by attention blocks (module docstring).

    Args:
        in_chans, num_classes: input channels, classes (0: no head).
        depths: blocks per stage; stages listed in ``conv_stages`` are conv blocks, the others
            split into ``ceil(depth / 2)`` mixer blocks then attention blocks.
        dim: width of the first stage (doubled per stage).
        in_dim: width of the stem's first conv.
        num_heads: attention heads per stage.
        window_size: token window per stage (for the token stages).
        mlp_ratio: MLP width multiple of the token blocks.
        mixer, mixer_kwargs: the mixer of the mixer blocks and its arguments.
        scan, scan_kwargs: order of each window's tokens for a sequence mixer (None: raster).
        layer_scale, layer_scale_conv: LayerScale init of token / conv blocks (None: off).
        conv_stages: how many leading stages are conv stages.
        global_pool, drop_rate, drop_path_rate: pooling ('avg' or ''), head dropout, stochastic depth.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depths: Sequence[int] = (1, 3, 8, 4),
                 dim: int = 80, in_dim: int = 32, num_heads: Sequence[int] = (2, 4, 8, 16),
                 window_size: Sequence[int] = (8, 8, 14, 7), mlp_ratio: float = 4.0,
                 mixer: MixerSpec = "mambavision", mixer_kwargs: Optional[dict] = None,
                 scan: Optional[str] = None, scan_kwargs: Optional[dict] = None,
                 layer_scale: Optional[float] = None, layer_scale_conv: Optional[float] = None,
                 conv_stages: int = 2, global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        n = len(depths)
        if len(num_heads) != n or len(window_size) != n:
            raise ValueError(f"num_heads and window_size need one entry per stage ({n}), got "
                             f"{list(num_heads)} and {list(window_size)}")
        dims = [dim * 2 ** i for i in range(n)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False, **fk), nn.BatchNorm2d(in_dim, eps=1e-4, **fk),
            nn.ReLU(), nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False, **fk), nn.BatchNorm2d(dim, eps=1e-4, **fk),
            nn.ReLU())
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, layer = [], 0
        for i, (depth, d) in enumerate(zip(depths, dims)):
            down = nn.Conv2d(dims[i - 1], d, 3, 2, 1, bias=False, **fk) if i > 0 else None
            if i < conv_stages:
                blocks = [ConvBlock(d, dpr[layer + j], layer_scale_conv, **fk) for j in range(depth)]
                stages.append(Stage(down, blocks, tokens=False))
                layer += depth
                continue
            blocks = []
            for j in range(depth):
                if j < math.ceil(depth / 2):
                    skw = layer_scan_kwargs(scan, scan_kwargs, layer)
                    mix = build_mixer(mixer, d, scan=scan, scan_kwargs=skw, mixer_kwargs=mixer_kwargs, **fk)
                else:
                    attn = dict(num_heads=num_heads[i], qkv_bias=True)
                    mix = build_mixer("attention", d, mixer_kwargs=attn, **fk)
                blocks.append(Block(d, mix, mlp_ratio=mlp_ratio, norm_layer=nn.LayerNorm,
                                    drop_path=dpr[layer], layer_scale_init=layer_scale, **fk))
                layer += 1
            stages.append(Stage(down, blocks, window=window_size[i]))
        self.stages = nn.ModuleList(stages)
        norm = nn.BatchNorm2d(dims[-1], **fk)
        self._finish(dims, in_chans, num_classes, global_pool, drop_rate, norm, device)


default_cfgs = generate_default_cfgs({
    "mambavision_test": vision_cfg("stem.0", input_size=(3, 64, 64)),
    "mambavision_tiny": vision_cfg("stem.0", crop_pct=1.0),
})

SIZES = {
    "mambavision_test": dict(depths=(1, 1, 2, 2), dim=16, in_dim=8, num_heads=(1, 1, 2, 2),
                             mixer_kwargs=dict(d_state=4)),
    "mambavision_tiny": dict(depths=(1, 3, 8, 4), dim=80, in_dim=32, num_heads=(2, 4, 8, 16),
                             window_size=(8, 8, 14, 7), drop_path_rate=0.2),
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> MambaVision:
    return create_encoder(MambaVision, variant, pretrained, SIZES, kwargs)


@register_model
def mambavision_test(pretrained: bool = False, **kwargs: Any) -> MambaVision:
    """Tiny test size (widths 16-128, one mixer and one attention block in stages 3-4, 64x64 input)."""
    return _create("mambavision_test", pretrained, **kwargs)


@register_model
def mambavision_tiny(pretrained: bool = False, **kwargs: Any) -> MambaVision:
    """MambaVision-T: width 80, depths (1, 3, 8, 4) (31.8M)."""
    return _create("mambavision_tiny", pretrained, **kwargs)
