"""VMamba: a four-stage encoder of SS2D blocks (2D selective scans along the cross scan).

VMamba (Liu et al. 2024, https://arxiv.org/abs/2401.10166), the v2 ("VMambav2") configs: a conv
stem of stride 4 (conv 3x3/2 -> LN -> GELU -> conv 3x3/2 -> LN), then four stages (stages 2-4
start with a conv 3x3/2 + LN that halves the grid and doubles the width) of blocks
LN -> SS2D (``ss2d``: in_proj -> dw 3x3 conv -> SiLU -> cross scan of 4 directions -> per-direction
x_proj / dt_proj / A / D -> merge -> LN -> out_proj; d_state 1, ssm_ratio 2) -> LN -> MLP (ratio 4),
a final LN, global average pooling and a linear head.  No position embedding.  T/S/B: depths
(2, 2, 5, 2) / (2, 2, 15, 2) / (2, 2, 15, 2), width 96 / 96 / 128; 30M / 50M / 89M.

Options: ``stem='patch'`` (one 4x4 conv + LN) and ``downsample='merge'`` (Swin's patch merging) give
VMamba-v0's layout (used by LocalVMamba).  Overrides: ``mixer=`` (any mixer; sequence mixers run
along ``scan``, by default the cross scan; ``mixer_kwargs=`` its arguments) and ``scan=`` (any 2D
scan for SS2D or the sequence mixer).  Any input size divisible by 32 works.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
from timm.layers import LayerNorm2d
from timm.models import generate_default_cfgs
from torch import nn

from mmeff._registry import register_model
from mmeff.blocks import Block

from ._vision import (HierarchicalEncoder, MixerSpec, PatchMerging2d, Stage, build_mixer, create_encoder,
                      layer_scan_kwargs, vision_cfg)


def _stem(kind: str, in_chans: int, dim: int, **fk) -> nn.Module:
    """Stride-4 stem: 'conv' (VMamba v2) or 'patch' (4x4 patches + LN, VMamba v0)."""
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(in_chans, dim // 2, 3, 2, 1, **fk), LayerNorm2d(dim // 2, **fk),
                             nn.GELU(), nn.Conv2d(dim // 2, dim, 3, 2, 1, **fk), LayerNorm2d(dim, **fk))
    if kind == "patch":
        return nn.Sequential(nn.Conv2d(in_chans, dim, 4, 4, **fk), LayerNorm2d(dim, **fk))
    raise ValueError(f"stem must be 'conv' or 'patch', got {kind!r}")


def _downsample(kind: str, dim: int, out_dim: int, **fk) -> nn.Module:
    """Stride-2 downsampling: 'conv' (3x3/2 conv + LN, VMamba v2) or 'merge' (patch merging, v0)."""
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(dim, out_dim, 3, 2, 1, **fk), LayerNorm2d(out_dim, **fk))
    if kind == "merge":
        return PatchMerging2d(dim, out_dim, **fk)
    raise ValueError(f"downsample must be 'conv' or 'merge', got {kind!r}")


class VMamba(HierarchicalEncoder):
    """Four stages of (downsample ->) pre-norm blocks of a 2D mixer and an MLP.

    Args:
        in_chans, num_classes: input channels, classes (0: no head).
        depths: blocks per stage.
        dims: width of the first stage (doubled per stage) or the four widths.
        mixer, mixer_kwargs: the token mixer (``'ss2d'``) and its arguments.
        scan, scan_kwargs: the 2D scan of SS2D / of a sequence mixer (a scan taking ``layer`` gets
            the block's index over all stages).
        mlp_ratio: MLP width multiple (0: no MLP, as VMamba v0).
        stem, downsample: 'conv' / 'conv' (v2) or 'patch' / 'merge' (v0).
        global_pool: 'avg' or ''.
        drop_rate, drop_path_rate: head dropout and stochastic depth (linear over all blocks).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, depths: Sequence[int] = (2, 2, 5, 2),
                 dims: Union[int, Sequence[int]] = 96, mixer: MixerSpec = "ss2d",
                 mixer_kwargs: Optional[dict] = None, scan: Optional[str] = "cross",
                 scan_kwargs: Optional[dict] = None, mlp_ratio: float = 4.0, stem: str = "conv",
                 downsample: str = "conv", global_pool: str = "avg", drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        dims = [dims * 2 ** i for i in range(len(depths))] if isinstance(dims, int) else list(dims)
        if len(dims) != len(depths):
            raise ValueError(f"dims must give one width per stage ({len(depths)}), got {dims}")
        self.stem = _stem(stem, in_chans, dims[0], **fk)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, layer = [], 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            blocks = []
            for _ in range(depth):
                skw = layer_scan_kwargs(scan, scan_kwargs, layer)
                mix = build_mixer(mixer, dim, scan=scan, scan_kwargs=skw, mixer_kwargs=mixer_kwargs, **fk)
                blocks.append(Block(dim, mix, mlp_ratio=mlp_ratio, norm_layer=nn.LayerNorm,
                                    drop_path=dpr[layer], **fk))
                layer += 1
            down = _downsample(downsample, dims[i - 1], dim, **fk) if i > 0 else None
            stages.append(Stage(down, blocks))
        self.stages = nn.ModuleList(stages)
        self._finish(dims, in_chans, num_classes, global_pool, drop_rate, LayerNorm2d(dims[-1], **fk), device)


def _cfg(**kw: Any) -> dict:
    return vision_cfg("stem.0", **kw)


default_cfgs = generate_default_cfgs({
    "vmamba_test": _cfg(input_size=(3, 64, 64)),
    "vmamba_tiny": _cfg(),
    "vmamba_small": _cfg(),
    "vmamba_base": _cfg(),
})

SIZES = {
    "vmamba_test": dict(depths=(1, 1, 1, 1), dims=16, mixer_kwargs=dict(d_state=1, ssm_ratio=2.0)),
    "vmamba_tiny": dict(depths=(2, 2, 5, 2), dims=96, drop_path_rate=0.2),
    "vmamba_small": dict(depths=(2, 2, 15, 2), dims=96, drop_path_rate=0.3),
    "vmamba_base": dict(depths=(2, 2, 15, 2), dims=128, drop_path_rate=0.6),
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> VMamba:
    return create_encoder(VMamba, variant, pretrained, SIZES, kwargs)


@register_model
def vmamba_test(pretrained: bool = False, **kwargs: Any) -> VMamba:
    """Tiny test size (one block per stage, widths 16-128, 64x64 input)."""
    return _create("vmamba_test", pretrained, **kwargs)


@register_model
def vmamba_tiny(pretrained: bool = False, **kwargs: Any) -> VMamba:
    """VMamba-T (v2): depths (2, 2, 5, 2), width 96 (30M)."""
    return _create("vmamba_tiny", pretrained, **kwargs)


@register_model
def vmamba_small(pretrained: bool = False, **kwargs: Any) -> VMamba:
    """VMamba-S (v2): depths (2, 2, 15, 2), width 96 (50M)."""
    return _create("vmamba_small", pretrained, **kwargs)


@register_model
def vmamba_base(pretrained: bool = False, **kwargs: Any) -> VMamba:
    """VMamba-B (v2): depths (2, 2, 15, 2), width 128 (89M)."""
    return _create("vmamba_base", pretrained, **kwargs)
