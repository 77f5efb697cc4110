"""MixerViT: a plain isotropic ViT whose token mixer is any mmeff mixer.

The default mixer is softmax attention (DeiT / ViT, https://arxiv.org/abs/2010.11929,
https://arxiv.org/abs/2012.12877); ``mixer='gla'`` or any name from ``mmeff.list_mixers()`` swaps it.
Any input size the patch divides works: the position table is resampled on the fly.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from timm.layers import trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from mmeff._registry import build_model, register_model
from mmeff.blocks import Block
from mmeff.layers import PatchEmbed, resample_pos_embed


class MixerViT(nn.Module):
    """Isotropic encoder: patch embed -> [cls] + pos -> Blocks(mixer) -> norm -> head.

    Args:
        img_size: size the position table is made for (other sizes are resampled).
        patch_size, in_chans, num_classes, embed_dim, depth: as in timm's ViT.
        mixer: mixer name or factory; ``mixer_kwargs`` its arguments (``num_heads`` for attention).
        mlp_ratio: feed-forward width multiple (0: no feed-forward).
        global_pool: 'token' (class token), 'avg' (mean of patch tokens) or '' (none).
        drop_rate, drop_path_rate: head dropout and stochastic depth (linear over depth).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 192, depth: int = 12,
                 mixer: Union[str, Callable, None] = "attention", mixer_kwargs: Optional[dict] = None,
                 num_heads: int = 3, mlp_ratio: float = 4.0, global_pool: str = "token",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 act_layer: Callable[..., nn.Module] = nn.GELU, device=None, dtype=None) -> None:
        super().__init__()
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        fk = dict(device=device, dtype=dtype)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, **fk)
        self.base_grid = self.patch_embed.grid_size((img_size, img_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **fk))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.base_grid[0] * self.base_grid[1], embed_dim, **fk))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        mkw = {"num_heads": num_heads, "causal": False, **(mixer_kwargs or {})}
        self.blocks = nn.Sequential(*[
            Block(embed_dim, mixer, mixer_kwargs=mkw, mlp_ratio=mlp_ratio, norm_layer=norm_layer,
                  act_layer=act_layer, drop_path=dpr[i], **fk)
            for i in range(depth)])
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size)
                             for i in range(depth)]
        self.norm = norm_layer(embed_dim, **fk)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **fk) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(_init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x, grid = self.patch_embed(x)  # [B, N, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        pos = resample_pos_embed(self.pos_embed, grid, self.base_grid, num_prefix_tokens=1)
        return x + pos, grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)  # [B, 1 + N, D]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        elif self.global_pool == "token":
            x = x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Features after selected blocks (timm's interface); NCHW maps or NLC tokens, no class token."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        B = x.shape[0]
        x, (gh, gw) = self._embed(x)
        feats = []
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take:
                y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens:]
                feats.append(y.reshape(B, gh, gw, -1).permute(0, 3, 1, 2).contiguous()
                             if output_fmt == "NCHW" else y)
        if intermediates_only:
            return feats
        return self.norm(x), feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    @staticmethod
    def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: "MixerViT") -> Dict[str, torch.Tensor]:
        """Unwrap ``model.``/``module.`` prefixes; resample a position table of another grid."""
        out = {}
        for k, v in state_dict.items():
            for prefix in ("module.", "model."):
                k = k[len(prefix):] if k.startswith(prefix) else k
            if k == "pos_embed" and v.shape != model.pos_embed.shape:
                n = int(round((v.shape[1] - 1) ** 0.5))
                v = resample_pos_embed(v, model.base_grid, (n, n), num_prefix_tokens=1)
            out[k] = v
        return out


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _cfg(**kw) -> Dict[str, Any]:
    return {**dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.9,
                   interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                   first_conv="patch_embed.proj", classifier="head", license="apache-2.0"), **kw}


default_cfgs = generate_default_cfgs({
    "mixervit_test": _cfg(input_size=(3, 64, 64)),
    "mixervit_tiny_patch16_224": _cfg(),
    "mixervit_small_patch16_224": _cfg(),
})

# name -> (patch, embed_dim, depth, num_heads, img_size)
SIZES = {
    "mixervit_test": dict(patch_size=16, embed_dim=32, depth=2, num_heads=2, img_size=64),
    "mixervit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "mixervit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
}


def _create(variant: str, pretrained: bool = False, **kwargs) -> MixerViT:
    return build_model(MixerViT, variant, pretrained, **{**SIZES[variant], **kwargs})


@register_model
def mixervit_test(pretrained: bool = False, **kwargs) -> MixerViT:
    """Tiny test size (2 blocks of width 32, 64x64 input)."""
    return _create("mixervit_test", pretrained, **kwargs)


@register_model
def mixervit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-Ti geometry (192 wide, 12 deep) with any mixer."""
    return _create("mixervit_tiny_patch16_224", pretrained, **kwargs)


@register_model
def mixervit_small_patch16_224(pretrained: bool = False, **kwargs) -> MixerViT:
    """DeiT-S geometry (384 wide, 12 deep) with any mixer."""
    return _create("mixervit_small_patch16_224", pretrained, **kwargs)
