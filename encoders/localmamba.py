"""LocalMamba: Vim and VMamba with windowed ("local") scans mixed with global ones.

LocalMamba (Huang et al. 2024, https://arxiv.org/abs/2403.09338) scans the token grid along four
directions per layer, chosen per layer by a search among: ``h`` (row-major), ``v`` (column-major),
``w2`` / ``w7`` (row-major inside 2x2 / 7x7 windows visited in row-major order) and each of these
reversed (``*_flip``).  Each direction has its own SSM parameters; each direction's output passes a
channel attention before the four are merged.  The searched direction sets of LocalVim-T and
LocalVMamba-T are the ``'localmamba'`` scan registered here (``layer=i`` picks layer i's set;
``directions=`` gives any set).

- ``localvim_tiny``: Vim's plain layout (width 192, depth 20, RMSNorm, fp32 residual, position
  table, average pooling; no class token), its mixer ``ss2d`` with a causal conv along each path
  (``conv='1d'``), d_state 16, gate, per-path channel attention.  8M parameters.
- ``localvmamba_tiny``: VMamba-v0's layout (4x4 patch stem, patch-merging downsampling, no MLP,
  depths (2, 2, 9, 2), width 96), SS2D with d_state 16, gate, out-norm and per-path channel
  attention.  26M parameters.

Overrides as the Vim and VMamba families (``mixer=``, ``mixer_kwargs=``, ``scan=``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from timm.models import generate_default_cfgs

from mmeff._registry import register_model
from mmeff.scans import create_scan, register_scan

from ._vision import IsotropicEncoder, create_encoder, vision_cfg
from .vmamba import VMamba

# searched direction sets, one per layer (LocalMamba's released LocalVim-T and LocalVMamba-T)
LOCALVIM_T = (
    ("h", "v_flip", "w7", "w7_flip"), ("h_flip", "w2_flip", "w7", "w7_flip"), ("h", "h_flip", "v", "w7"),
    ("h", "h_flip", "v", "v_flip"), ("h", "h_flip", "v", "v_flip"), ("h", "h_flip", "v", "v_flip"),
    ("h_flip", "v", "v_flip", "w7"), ("h_flip", "v", "v_flip", "w2_flip"), ("h", "h_flip", "v", "v_flip"),
    ("h", "h_flip", "v", "v_flip"), ("h", "v", "v_flip", "w2"), ("h", "v", "v_flip", "w2_flip"),
    ("h", "h_flip", "v_flip", "w7"), ("h_flip", "v", "v_flip", "w2"), ("h", "h_flip", "v", "v_flip"),
    ("h", "v", "w2", "w2_flip"), ("v", "v_flip", "w2", "w7"), ("h", "h_flip", "v", "w2"),
    ("h", "h_flip", "w2_flip", "w7"), ("v", "v_flip", "w2", "w2_flip"),
)
LOCALVMAMBA_T = (
    ("h", "h_flip", "w7", "w7_flip"), ("h_flip", "v_flip", "w2", "w2_flip"),
    ("h_flip", "v_flip", "w2_flip", "w7"), ("h_flip", "v", "v_flip", "w2"),
    ("h", "h_flip", "v_flip", "w2_flip"), ("h_flip", "v_flip", "w2", "w2_flip"),
    ("h", "w2_flip", "w7", "w7_flip"), ("h", "h_flip", "v", "v_flip"), ("h", "v_flip", "w7", "w7_flip"),
    ("h_flip", "v", "w2", "w7_flip"), ("v", "v_flip", "w2", "w7_flip"), ("h", "h_flip", "v_flip", "w2_flip"),
    ("v_flip", "w2_flip", "w7", "w7_flip"), ("h_flip", "v_flip", "w2_flip", "w7_flip"),
    ("h_flip", "v", "w7", "w7_flip"),
)
TABLES = {"vim": LOCALVIM_T, "vmamba": LOCALVMAMBA_T}


def _direction(grid: Sequence[int], name: str) -> torch.Tensor:
    """The path ``[N]`` of one LocalMamba direction name on ``grid``."""
    base, flip = (name[:-5], True) if name.endswith("_flip") else (name, False)
    if base == "h":
        path = create_scan("raster", grid).paths[0]
    elif base == "v":
        path = create_scan("column", grid).paths[0]
    elif base[:1] == "w" and base[1:].isdigit() and int(base[1:]) > 0:
        path = create_scan("local", grid, window=int(base[1:])).paths[0]
    else:
        raise ValueError(f"unknown LocalMamba direction {name!r}; use h, v or w<k>, optionally + '_flip'")
    return path.flip(0) if flip else path


@register_scan("localmamba", ndim=2)
def localmamba_scan(grid: Sequence[int], layer: int = 0, table: str = "vim",
                    directions: Sequence[str] = ()) -> torch.Tensor:
    """LocalMamba's paths: ``directions`` if given, else the searched set of layer ``layer`` (modulo
    the table's depth) of ``table`` ('vim': LocalVim-T, 'vmamba': LocalVMamba-T)."""
    if not directions:
        if table not in TABLES:
            raise ValueError(f"table must be one of {sorted(TABLES)}, got {table!r}")
        directions = TABLES[table][layer % len(TABLES[table])]
    return torch.stack([_direction(grid, d) for d in directions])


class LocalVim(IsotropicEncoder):
    """LocalVim (see the module docstring); the model is :class:`IsotropicEncoder` with its rows."""


class LocalVMamba(VMamba):
    """LocalVMamba (see the module docstring); the model is :class:`VMamba` with its rows."""


default_cfgs = generate_default_cfgs({
    "localvim_test": vision_cfg("patch_embed.proj", input_size=(3, 64, 64)),
    "localvim_tiny": vision_cfg("patch_embed.proj"),
    "localvmamba_test": vision_cfg("stem.0", input_size=(3, 64, 64)),
    "localvmamba_tiny": vision_cfg("stem.0"),
})

_VIM_LAYER = dict(conv="1d", d_conv=4, conv_bias=True, d_state=16, ssm_ratio=2.0, gate=True,
                  out_norm=False, path_attn=True)
_VMAMBA_LAYER = dict(d_state=16, ssm_ratio=2.0, d_conv=3, conv_bias=True, gate=True, out_norm=True,
                     path_attn=True)
SIZES = {
    "localvim_test": dict(patch_size=16, embed_dim=32, depth=2, img_size=64, mixer="ss2d",
                          mixer_kwargs={**_VIM_LAYER, "d_state": 4}, scan="localmamba",
                          scan_kwargs=dict(table="vim"), class_token=False, global_pool="avg"),
    "localvim_tiny": dict(patch_size=16, embed_dim=192, depth=20, mixer="ss2d", mixer_kwargs=_VIM_LAYER,
                          scan="localmamba", scan_kwargs=dict(table="vim"), class_token=False,
                          global_pool="avg"),
    "localvmamba_test": dict(depths=(1, 1, 1, 1), dims=16, mlp_ratio=0.0, stem="patch", downsample="merge",
                             mixer_kwargs={**_VMAMBA_LAYER, "d_state": 4}, scan="localmamba",
                             scan_kwargs=dict(table="vmamba")),
    "localvmamba_tiny": dict(depths=(2, 2, 9, 2), dims=96, mlp_ratio=0.0, stem="patch", downsample="merge",
                             mixer_kwargs=_VMAMBA_LAYER, scan="localmamba", scan_kwargs=dict(table="vmamba"),
                             drop_path_rate=0.2),
}


def _create(cls: type, variant: str, pretrained: bool, kwargs: dict) -> Any:
    return create_encoder(cls, variant, pretrained, SIZES, kwargs)


@register_model
def localvim_test(pretrained: bool = False, **kwargs: Any) -> LocalVim:
    """Tiny LocalVim (2 layers of width 32, 64x64 input)."""
    return _create(LocalVim, "localvim_test", pretrained, kwargs)


@register_model
def localvim_tiny(pretrained: bool = False, **kwargs: Any) -> LocalVim:
    """LocalVim-T: width 192, 20 layers of searched local + global scans (8M)."""
    return _create(LocalVim, "localvim_tiny", pretrained, kwargs)


@register_model
def localvmamba_test(pretrained: bool = False, **kwargs: Any) -> LocalVMamba:
    """Tiny LocalVMamba (one block per stage, widths 16-128, 64x64 input)."""
    return _create(LocalVMamba, "localvmamba_test", pretrained, kwargs)


@register_model
def localvmamba_tiny(pretrained: bool = False, **kwargs: Any) -> LocalVMamba:
    """LocalVMamba-T: depths (2, 2, 9, 2), width 96, searched local + global scans (26M)."""
    return _create(LocalVMamba, "localvmamba_tiny", pretrained, kwargs)
