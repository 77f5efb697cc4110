"""MixerViT: DeiT's geometry (a ViT with a feed-forward in every block) whose token mixer is any
mmeff mixer.

ViT / DeiT (https://arxiv.org/abs/2010.11929, https://arxiv.org/abs/2012.12877): 16x16 patches, a
class token, an absolute position table (resampled for other input sizes), pre-LayerNorm blocks of
mixer + GELU MLP (ratio 4), a final norm and a linear head.  The default mixer is softmax attention
(``attention``, SDPA); ``mixer='gla'`` or any name from ``mmeff.list_mixers()`` swaps it, and
``scan=`` orders the tokens for sequence mixers.  The model is :class:`IsotropicEncoder` with these
rows (the class token sits in the middle of what the mixer sees; for attention that is the same).
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs

from mmeff._registry import register_model

from ._vision import IsotropicEncoder, create_encoder, vision_cfg


class MixerViT(IsotropicEncoder):
    """ViT / DeiT with any mixer (see the module docstring)."""


default_cfgs = generate_default_cfgs({
    "mixervit_test": vision_cfg("patch_embed.proj", input_size=(3, 64, 64)),
    "mixervit_tiny_patch16_224": vision_cfg("patch_embed.proj"),
    "mixervit_small_patch16_224": vision_cfg("patch_embed.proj"),
})

_VIT = dict(patch_size=16, depth=12, mixer="attention", mlp_ratio=4.0, class_token=True,
            global_pool="token", norm_layer="layernorm", act_layer="gelu", residual_in_fp32=False)

SIZES = {
    "mixervit_test": {**_VIT, "embed_dim": 32, "depth": 2, "img_size": 64,
                      "mixer_kwargs": dict(num_heads=2)},
    "mixervit_tiny_patch16_224": {**_VIT, "embed_dim": 192, "mixer_kwargs": dict(num_heads=3)},
    "mixervit_small_patch16_224": {**_VIT, "embed_dim": 384, "mixer_kwargs": dict(num_heads=6)},
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> MixerViT:
    return create_encoder(MixerViT, variant, pretrained, SIZES, kwargs)


@register_model
def mixervit_test(pretrained: bool = False, **kwargs: Any) -> MixerViT:
    """Tiny test size (2 blocks of width 32, 64x64 input)."""
    return _create("mixervit_test", pretrained, **kwargs)


@register_model
def mixervit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> MixerViT:
    """DeiT-Ti geometry (192 wide, 12 deep, 3 heads) with any mixer."""
    return _create("mixervit_tiny_patch16_224", pretrained, **kwargs)


@register_model
def mixervit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> MixerViT:
    """DeiT-S geometry (384 wide, 12 deep, 6 heads) with any mixer."""
    return _create("mixervit_small_patch16_224", pretrained, **kwargs)
