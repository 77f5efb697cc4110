"""ViG: a plain vision encoder of bidirectional gated linear attention with locality-aware gating.

ViG (Liao et al. 2024, https://arxiv.org/abs/2405.18425), the plain ViG-T: a two-conv stem of
stride 16 (conv 9x9/8 + LN + SiLU, conv 3x3/2 + LN), an absolute position table (resampled for other
sizes), 12 blocks of RMSNorm -> ViG mixer (``vig``: depthwise 3x3 conv + SiLU, a bidirectional
``gla`` with 3 heads, key width D/2 and value width D, blended with the conv branch by a sigmoid
gate) -> RMSNorm -> MLP (ratio 4, SiLU), a final RMSNorm, average pooling and a linear head.
Width 192; about 6M parameters (ViG-T: 6M).

Overrides: ``mixer=`` replaces the whole ViG mixer; to keep its locality gating around another
mixer use ``mixer_kwargs=dict(inner='gated_deltanet')``.  ``scan=`` runs the inner mixer along a 2D
scan.  Any input size divisible by 16.
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs

from mmeff._registry import register_model

from ._vision import IsotropicEncoder, create_encoder, vision_cfg


class ViG(IsotropicEncoder):
    """ViG (see the module docstring); the model is :class:`IsotropicEncoder` with its rows."""


default_cfgs = generate_default_cfgs({
    "vig_test": vision_cfg("patch_embed.proj.0", input_size=(3, 64, 64)),
    "vig_tiny": vision_cfg("patch_embed.proj.0"),
})

_VIG = dict(patch_size=16, mixer="vig", mlp_ratio=4.0, act_layer="silu", class_token=False,
            global_pool="avg", stem="vig", norm_layer="rmsnorm", residual_in_fp32=False)
SIZES = {
    "vig_test": {**_VIG, "embed_dim": 32, "depth": 2, "img_size": 64,
                 "mixer_kwargs": dict(inner_kwargs=dict(num_heads=2, expand_k=0.5, expand_v=1.0))},
    "vig_tiny": {**_VIG, "embed_dim": 192, "depth": 12,
                 "mixer_kwargs": dict(inner_kwargs=dict(num_heads=3, expand_k=0.5, expand_v=1.0))},
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> ViG:
    return create_encoder(ViG, variant, pretrained, SIZES, kwargs)


@register_model
def vig_test(pretrained: bool = False, **kwargs: Any) -> ViG:
    """Tiny test size (2 blocks of width 32, 64x64 input)."""
    return _create("vig_test", pretrained, **kwargs)


@register_model
def vig_tiny(pretrained: bool = False, **kwargs: Any) -> ViG:
    """ViG-T: width 192, 12 blocks of bidirectional GLA with locality-aware gating (6M)."""
    return _create("vig_tiny", pretrained, **kwargs)
