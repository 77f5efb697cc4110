"""Vision Mamba (Vim): a plain stack of bidirectional Mamba blocks on 16x16 patches.

Vim (Zhu et al. 2024, https://arxiv.org/abs/2401.09417): patch embedding, a class token in the
middle of the sequence, an absolute position table (resampled for other input sizes), 24 blocks of
RMSNorm -> bidirectional Mamba (``mamba`` with ``causal=False``: shared in/out projections, a
separate conv / x_proj / dt_proj / A / D for the backward direction, the two averaged; d_state 16,
expand 2) with the residual stream in fp32 and no feed-forward, a final norm and a linear head.
Ti/S/B: width 192/384/768, 7M/26M/98M parameters.

Overrides: ``mixer=`` (any sequence mixer, e.g. ``'gated_deltanet'``), ``mixer_kwargs=`` and
``scan=`` (any 2D scan: every block's mixer sees the patches along the scan's paths, the class
token inserted at the middle position ``N // 2`` of each path; with K > 1 paths the outputs are
merged back to grid order; see :class:`encoders._vision.ClassTokenMixer`).  ``class_token=False,
global_pool='avg'`` drops the class token (needed for mixers that read the grid themselves).
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs

from mmeff._registry import register_model

from ._vision import IsotropicEncoder, create_encoder, vision_cfg



class Vim(IsotropicEncoder):
    """Vision Mamba (see the module docstring); the model is :class:`IsotropicEncoder` with Vim's rows."""


default_cfgs = generate_default_cfgs({
    "vim_test": vision_cfg("patch_embed.proj", input_size=(3, 64, 64)),
    "vim_tiny_patch16_224": vision_cfg("patch_embed.proj"),
    "vim_small_patch16_224": vision_cfg("patch_embed.proj"),
    "vim_base_patch16_224": vision_cfg("patch_embed.proj"),
})

_VIM = dict(patch_size=16, depth=24, mixer="mamba", mixer_kwargs=dict(d_state=16, expand=2),
            mlp_ratio=0.0, class_token=True, global_pool="token", norm_layer="rmsnorm",
            residual_in_fp32=True)

SIZES = {
    "vim_test": {**_VIM, "embed_dim": 32, "depth": 2, "img_size": 64,
                 "mixer_kwargs": dict(d_state=4, expand=2)},
    "vim_tiny_patch16_224": {**_VIM, "embed_dim": 192},
    "vim_small_patch16_224": {**_VIM, "embed_dim": 384},
    "vim_base_patch16_224": {**_VIM, "embed_dim": 768},
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> Vim:
    return create_encoder(Vim, variant, pretrained, SIZES, kwargs)


@register_model
def vim_test(pretrained: bool = False, **kwargs: Any) -> Vim:
    """Tiny test size (2 blocks of width 32, 64x64 input)."""
    return _create("vim_test", pretrained, **kwargs)


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> Vim:
    """Vim-Ti: width 192, 24 bidirectional Mamba blocks (7M)."""
    return _create("vim_tiny_patch16_224", pretrained, **kwargs)


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> Vim:
    """Vim-S: width 384, 24 blocks (26M)."""
    return _create("vim_small_patch16_224", pretrained, **kwargs)


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> Vim:
    """Vim-B: width 768, 24 blocks (98M)."""
    return _create("vim_base_patch16_224", pretrained, **kwargs)
