"""PlainMamba: a non-hierarchical Mamba encoder with continuous 2D snake scans.

PlainMamba (Yang et al. 2024, https://arxiv.org/abs/2403.17695): a conv stem of stride 16 (conv
7x7/2 + BN + ReLU, one or two conv 3x3 + BN + ReLU, conv 8x8/8), an absolute position table, and
blocks of LN -> PlainMamba layer (``ss2d`` with ``scan='snake4'``: in_proj to (x, z), depthwise 7x7
conv + SiLU, one set of SSM parameters shared by four continuous snake scans — row and column
boustrophedons and their reverses — with direction-aware ``B`` (a learned offset per step
direction), outputs averaged, gated by ``silu(z)``, out_proj), no feed-forward, a final LN, average
pooling and a linear head.  L1/L2/L3: width 192/384/448, depth 24/24/36; 7.3M/25.7M/50.5M.
PlainMamba-L1's one extra depthwise conv after its first layer (2k parameters) is left out.

Overrides: ``mixer=``, ``mixer_kwargs=``, ``scan=`` (sequence mixers run along the snakes by
default); any input size divisible by 16 (the position table is resampled).
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs

from mmeff._registry import register_model

from ._vision import IsotropicEncoder, create_encoder, vision_cfg


class PlainMamba(IsotropicEncoder):
    """PlainMamba (see the module docstring); the model is :class:`IsotropicEncoder` with its rows."""


default_cfgs = generate_default_cfgs({
    name: vision_cfg("patch_embed.proj.0", **kw) for name, kw in (
        ("plainmamba_test", dict(input_size=(3, 64, 64))), ("plainmamba_l1", {}), ("plainmamba_l2", {}),
        ("plainmamba_l3", {}))})

_LAYER = dict(d_state=16, ssm_ratio=2.0, d_conv=7, conv_bias=True, gate=True, out_norm=False, bias=True,
              shared_ssm=True, direction_embed=True)
_PLAIN = dict(patch_size=16, mixer="ss2d", mixer_kwargs=_LAYER, scan="snake4", mlp_ratio=0.0,
              class_token=False, global_pool="avg", stem="plainmamba", norm_layer="layernorm",
              residual_in_fp32=False)

SIZES = {
    "plainmamba_test": {**_PLAIN, "embed_dim": 32, "depth": 2, "img_size": 64, "stem_convs": 1,
                        "mixer_kwargs": {**_LAYER, "d_state": 4}},
    "plainmamba_l1": {**_PLAIN, "embed_dim": 192, "depth": 24, "stem_convs": 1},
    "plainmamba_l2": {**_PLAIN, "embed_dim": 384, "depth": 24, "stem_convs": 2},
    "plainmamba_l3": {**_PLAIN, "embed_dim": 448, "depth": 36, "stem_convs": 2},
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    return create_encoder(PlainMamba, variant, pretrained, SIZES, kwargs)


@register_model
def plainmamba_test(pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    """Tiny test size (2 layers of width 32, 64x64 input)."""
    return _create("plainmamba_test", pretrained, **kwargs)


@register_model
def plainmamba_l1(pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    """PlainMamba-L1: width 192, 24 layers (7.3M)."""
    return _create("plainmamba_l1", pretrained, **kwargs)


@register_model
def plainmamba_l2(pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    """PlainMamba-L2: width 384, 24 layers (25.7M)."""
    return _create("plainmamba_l2", pretrained, **kwargs)


@register_model
def plainmamba_l3(pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    """PlainMamba-L3: width 448, 36 layers (50.5M)."""
    return _create("plainmamba_l3", pretrained, **kwargs)
