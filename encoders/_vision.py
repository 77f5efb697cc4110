"""Shared pieces of the vision encoder families (Vim, VMamba, PlainMamba, LocalMamba, MambaVision, ViG).

- :func:`build_mixer`: one block's token mixer from a mixer name and a scan.  A mixer that takes a
  ``scan`` (``ss2d``, ``vig``) gets it; a mixer that reads the token grid itself (window or
  neighbourhood attention, attention with 2D RoPE) gets the grid and no scan; any other (sequence)
  mixer runs along the scan's paths through :class:`GridScannedMixer`, or in raster order without
  a scan.  Mixers are bidirectional (``causal=False``) unless ``mixer_kwargs`` says otherwise.
  A scan whose function takes ``layer`` (``zigzag``, ``localmamba``) gets the block index, so each
  block can follow its own path.
- :class:`ClassTokenMixer`: Vim's class token in the middle of every path.
- :class:`IsotropicEncoder`: patch grid -> blocks -> norm -> head (Vim, LocalVim, PlainMamba, ViG).
- :class:`HierarchicalEncoder`, :class:`Stage`: four stages at strides 4, 8, 16, 32 (VMamba,
  LocalVMamba, MambaVision).
- :func:`create_encoder`: a ``SIZES`` row plus the user's overrides, through timm's builder.

Token grids reach the mixers by ``set_grid`` before each forward (the input size may change).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from einops import rearrange
from timm.layers import LayerNorm2d, get_act_layer, get_norm_layer, to_2tuple, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import nn
import torch.nn.functional as F

from mmeff._registry import build_model
from mmeff.blocks import Block
from mmeff.layers import PatchEmbed, resample_pos_embed
from mmeff.mixers import Mixer, create_mixer, mixer_class
from mmeff.scans import ScannedMixer, check_grid, create_scan

MixerSpec = Union[str, Callable[..., nn.Module]]
_PROBE_GRID = (4, 4)  # a grid to validate scan names and arguments before the real one is known


# ------------------------------------------------------------------ checks and mixers

def check_image(x: torch.Tensor, in_chans: int, stride: int) -> None:
    """ValueError unless ``x`` is ``[B, in_chans, H, W]`` with H and W divisible by ``stride``."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input [B, {in_chans}, H, W] ({in_chans} channels), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % stride or w % stride:
        raise ValueError(f"input size {h}x{w} must be divisible by {stride} (the encoder's total stride)")


def _params(factory: Callable) -> Dict[str, inspect.Parameter]:
    return dict(inspect.signature(factory).parameters)


def _factory(mixer: MixerSpec) -> Callable[..., nn.Module]:
    if isinstance(mixer, str):
        return mixer_class(mixer)  # unknown names: ValueError with close matches
    if not callable(mixer):
        raise ValueError(f"mixer must be a registered mixer name or a callable, got {type(mixer).__name__}")
    return mixer


def reads_grid(mixer: MixerSpec) -> bool:
    """Whether ``mixer`` takes the token grid but no scan (window / neighbourhood / attention)."""
    params = _params(_factory(mixer))
    return "grid" in params and "scan" not in params


def layer_scan_kwargs(scan: Optional[str], scan_kwargs: Optional[dict], layer: int) -> dict:
    """``scan_kwargs`` for block ``layer``: adds ``layer=`` if the scan takes it and it is not set."""
    kw = dict(scan_kwargs or {})
    if scan is not None and "layer" not in kw and "layer" in create_scan(scan, _PROBE_GRID, **kw).kwargs:
        kw["layer"] = layer
    return kw


class GridScannedMixer(ScannedMixer):
    """:class:`~mmeff.scans.ScannedMixer` whose default grid follows the encoder (``set_grid``)."""

    def set_grid(self, grid: Sequence[int]) -> None:
        self.grid = check_grid(grid, len(self.grid))


def build_mixer(mixer: MixerSpec, dim: int, *, grid: Optional[Sequence[int]] = None,
                scan: Optional[str] = None, scan_kwargs: Optional[dict] = None,
                mixer_kwargs: Optional[dict] = None, device=None, dtype=None) -> nn.Module:
    """One block's token mixer (rules in the module docstring).

    Args:
        mixer: a registered mixer name or a callable ``(dim, **kw) -> nn.Module``.
        dim: width.
        grid: the token grid, if known (it is updated by ``set_grid`` later).
        scan, scan_kwargs: a registered 2D scan and its arguments, or None (raster order).
        mixer_kwargs: the mixer's arguments; they win over the defaults (``causal=False``, grid).
    """
    factory = _factory(mixer)
    params = _params(factory)
    extra: Dict[str, Any] = {"causal": False, "device": device, "dtype": dtype, "grid": grid}
    wrap = False
    if scan is not None:
        if "scan" in params:
            extra.update(scan=scan, scan_kwargs=scan_kwargs)
        elif "grid" in params:
            raise ValueError(f"mixer {mixer!r} reads the token grid itself and follows no scan; got "
                             f"scan={scan!r} (leave scan=None with this mixer)")
        else:
            wrap = True
    kw = {k: v for k, v in extra.items() if k in params and v is not None}
    kw.update(mixer_kwargs or {})
    module = create_mixer(mixer, dim, **kw) if isinstance(mixer, str) else factory(dim, **kw)
    if wrap:
        module = GridScannedMixer(module, scan, grid or _PROBE_GRID, dim=dim, scan_kwargs=scan_kwargs)
    return module


def set_grid(blocks: Iterable[nn.Module], grid: Tuple[int, int]) -> None:
    """Tell every block's mixer that reads a grid the current token grid."""
    for blk in blocks:
        mixer = getattr(blk, "mixer", None)
        if hasattr(mixer, "set_grid"):
            mixer.set_grid(grid)


class ClassTokenMixer(Mixer):
    """Vim's class token in the middle of the sequence, for any sequence mixer and any scan.

    The residual stream keeps timm's layout ``[cls, patches in raster order]``.  The mixer sees each
    path of ``scan`` (the raster order when None) with the class token inserted at position
    ``N // 2``, the middle (for the raster order this is Vim's layout, and the one position a flip
    keeps).  With K paths, the class token's K outputs are averaged and the patch outputs merged
    back to grid order as :class:`~mmeff.scans.ScannedMixer` does.

    Args:
        mixer: a sequence mixer ``[B, L, D] -> [B, L, D]``.
        dim: width D.
        scan, scan_kwargs: a 2D scan over the patch grid, or None.
        grid: the patch grid ``(H, W)``.
    """

    def __init__(self, mixer: nn.Module, dim: int, scan: Optional[str] = None,
                 grid: Optional[Sequence[int]] = None, scan_kwargs: Optional[dict] = None) -> None:
        super().__init__(dim, causal=False)
        self.mixer = mixer
        self.scan_name, self.scan_kwargs = scan, dict(scan_kwargs or {})
        self.grid = None if grid is None else check_grid(grid, 2)
        if scan is not None:
            create_scan(scan, self.grid or _PROBE_GRID, **self.scan_kwargs)  # validates

    def set_grid(self, grid: Sequence[int]) -> None:
        self.grid = check_grid(grid, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1 + N, D]
        self._check_input(x)
        B, N = x.shape[0], x.shape[1] - 1
        cls, tokens = x[:, :1], x[:, 1:]
        scan = None
        if self.scan_name is not None:
            scan = create_scan(self.scan_name, self.grid or (1, N), device=x.device, **self.scan_kwargs)
            tokens = scan.gather(tokens)  # [B*K, N, D]
            cls = cls.repeat_interleave(scan.num_paths, dim=0)
        m = N // 2
        y = self.mixer(torch.cat([tokens[:, :m], cls, tokens[:, m:]], dim=1))
        cls, tokens = y[:, m:m + 1], torch.cat([y[:, :m], y[:, m + 1:]], dim=1)
        if scan is not None:
            tokens = scan.merge(tokens, "mean")  # [B, N, D]
            cls = cls.reshape(B, scan.num_paths, 1, -1).mean(dim=1)
        return torch.cat([cls, tokens], dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scan={self.scan_name!r}, class token at N // 2"


# ------------------------------------------------------------------ shared model helpers

def init_weights(module: nn.Module) -> None:
    """timm's ViT init (trunc-normal Linear, zero bias) outside the mixers, which keep their own."""
    for m in module.children():
        if isinstance(m, Mixer):
            continue
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        init_weights(m)


def no_weight_decay_names(model: nn.Module, extra: Iterable[str] = ()) -> set:
    """``extra`` plus every parameter marked ``_no_weight_decay`` (SSM ``A_log`` and ``D``)."""
    return set(extra) | {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}


def strip_prefixes(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop ``module.`` / ``model.`` prefixes (DDP, EMA wrappers) from checkpoint keys."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("module.", "model."):
            k = k[len(prefix):] if k.startswith(prefix) else k
        out[k] = v
    return out


def prune_layers(model: nn.Module, attr: str, indices: Union[int, List[int]], prune_norm: bool,
                 prune_head: bool) -> List[int]:
    """timm's ``prune_intermediate_layers``: keep ``model.<attr>`` (blocks or stages) up to the last
    index taken, optionally drop the final norm and the head; returns the indices taken."""
    layers = getattr(model, attr)
    take, max_index = feature_take_indices(len(layers), indices)
    setattr(model, attr, layers[:max_index + 1])
    if prune_norm:
        model.norm = nn.Identity()
    if prune_head:
        model.reset_classifier(0, "")
    return take


def vision_cfg(first_conv: str, **kw) -> Dict[str, Any]:
    """Default pretrained cfg of an mmeff vision model (ImageNet normalisation, no weights)."""
    return {**dict(num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=0.9,
                   interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                   first_conv=first_conv, classifier="head", license="apache-2.0"), **kw}


def create_encoder(cls: type, variant: str, pretrained: bool, sizes: Dict[str, dict],
                   kwargs: Dict[str, Any]) -> nn.Module:
    """Build ``variant`` from its ``sizes`` row and the user's ``kwargs``.

    ``mixer=`` replaces the row's ``mixer_kwargs`` (they belong to the row's mixer) and, when the new
    mixer reads the grid itself and no ``scan=`` is given, the row's scan; ``scan=`` replaces the
    row's ``scan_kwargs``.
    """
    cfg = dict(sizes[variant])
    if "mixer" in kwargs:
        cfg.pop("mixer_kwargs", None)
        if "scan" not in kwargs and reads_grid(kwargs["mixer"]):
            cfg.update(scan=None, scan_kwargs=None)
    if "scan" in kwargs:
        cfg.pop("scan_kwargs", None)
    return build_model(cls, variant, pretrained, **{**cfg, **kwargs})


# ------------------------------------------------------------------ isotropic encoders

class ConvStem(PatchEmbed):
    """A :class:`~mmeff.layers.PatchEmbed` whose projection is a small conv stack of total stride
    ``patch_size`` (same input checks and output).

    Kinds: ``'plainmamba'`` (conv 7x7/2 + BN + ReLU, ``num_convs`` x (conv 3x3 + BN + ReLU), conv
    p/2 x p/2 stride p/2; PlainMamba) and ``'vig'`` (conv (p/2+1)/(p/2) + LN + SiLU, conv 3x3/2 + LN;
    ViG's v2 embedding).
    """

    def __init__(self, kind: str, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192,
                 num_convs: int = 1, device=None, dtype=None) -> None:
        nn.Module.__init__(self)
        if not isinstance(patch_size, int) or patch_size % 4:
            raise ValueError(f"patch_size of a conv stem must be an int divisible by 4, got {patch_size!r}")
        self.patch_size, self.in_chans = (patch_size, patch_size), in_chans
        fk = dict(device=device, dtype=dtype)
        half = patch_size // 2
        if kind == "plainmamba":
            width = 64
            layers = [nn.Conv2d(in_chans, width, 7, 2, 3, bias=False, **fk), nn.BatchNorm2d(width, **fk),
                      nn.ReLU()]
            for _ in range(num_convs):
                layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False, **fk), nn.BatchNorm2d(width, **fk),
                           nn.ReLU()]
            layers.append(nn.Conv2d(width, embed_dim, half, half, **fk))
        elif kind == "vig":
            layers = [nn.Conv2d(in_chans, embed_dim // 2, half + 1, half, 1, **fk),
                      LayerNorm2d(embed_dim // 2, **fk), nn.SiLU(),
                      nn.Conv2d(embed_dim // 2, embed_dim, 3, 2, 1, **fk), LayerNorm2d(embed_dim, **fk)]
        else:
            raise ValueError(f"stem must be 'patch', 'plainmamba' or 'vig', got {kind!r}")
        self.proj = nn.Sequential(*layers)
        self.norm = nn.Identity()


def make_stem(stem: str, patch_size: int, in_chans: int, embed_dim: int, num_convs: int,
              **fk) -> PatchEmbed:
    if stem == "patch":
        return PatchEmbed(patch_size, in_chans, embed_dim, **fk)
    return ConvStem(stem, patch_size, in_chans, embed_dim, num_convs, **fk)


class IsotropicEncoder(nn.Module):
    """Plain encoder on a patch grid: stem -> + position table -> [class token] -> Blocks -> norm -> head.

    Args:
        img_size: size the position table is made for (other sizes are resampled).
        patch_size, in_chans, num_classes, embed_dim, depth: as in timm's ViT.
        mixer, mixer_kwargs: the token mixer (name or factory) and its arguments.
        scan, scan_kwargs: token order (see :func:`build_mixer`; with a class token see
            :class:`ClassTokenMixer`); a scan taking ``layer`` gets the block index.
        mlp_ratio: feed-forward width multiple (0: none, as in Vim).
        class_token: Vim's class token, seen by the mixers in the middle of each path.
        pos_embed: learned absolute position table.
        global_pool: 'token' (class token), 'avg' (mean of patch tokens) or ''.
        stem, stem_convs: 'patch' (one strided conv), 'plainmamba' or 'vig' (see :class:`ConvStem`).
        norm_layer, act_layer: timm names or classes ('rmsnorm', 'layernorm'; 'gelu', 'silu').
        residual_in_fp32: keep the residual stream in fp32 (Vim, Mamba).
        drop_rate, drop_path_rate: head dropout and stochastic depth (linear over depth).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 192, depth: int = 24,
                 mixer: MixerSpec = "mamba", mixer_kwargs: Optional[dict] = None,
                 scan: Optional[str] = None, scan_kwargs: Optional[dict] = None, mlp_ratio: float = 0.0,
                 class_token: bool = True, pos_embed: bool = True, global_pool: str = "token",
                 stem: str = "patch", stem_convs: int = 1, norm_layer: Any = "rmsnorm",
                 act_layer: Any = "gelu", residual_in_fp32: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True (or use global_pool='avg')")
        fk = dict(device=device, dtype=dtype)
        norm_layer, act_layer = get_norm_layer(norm_layer), get_act_layer(act_layer)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.grad_checkpointing = False
        self.patch_embed = make_stem(stem, patch_size, in_chans, embed_dim, stem_convs, **fk)
        self.base_grid = self.patch_embed.grid_size(to_2tuple(img_size))
        n = self.base_grid[0] * self.base_grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **fk)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dim, **fk)) if pos_embed else None
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        blocks = []
        for i in range(depth):
            skw = layer_scan_kwargs(scan, scan_kwargs, i)
            if class_token:
                inner = build_mixer(mixer, embed_dim, mixer_kwargs=mixer_kwargs, **fk)
                mix = ClassTokenMixer(inner, embed_dim, scan, self.base_grid, skw)
            else:
                mix = build_mixer(mixer, embed_dim, grid=self.base_grid, scan=scan, scan_kwargs=skw,
                                  mixer_kwargs=mixer_kwargs, **fk)
            blocks.append(Block(embed_dim, mix, mlp_ratio=mlp_ratio, norm_layer=norm_layer,
                                act_layer=act_layer, drop_path=dpr[i],
                                residual_in_fp32=residual_in_fp32, **fk))
        self.blocks = nn.Sequential(*blocks)
        reduction = self.patch_embed.patch_size[0]
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=reduction)
                             for i in range(depth)]
        self.norm = norm_layer(embed_dim, **fk)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes, **fk) if num_classes > 0 else nn.Identity()
        init_weights(self)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return no_weight_decay_names(self, ("pos_embed", "cls_token"))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^cls_token|pos_embed|patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool == "token" and self.cls_token is None:
                raise ValueError("global_pool='token' needs a class token; this model has none")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x, grid = self.patch_embed(x)  # [B, N, D]
        if self.pos_embed is not None:
            x = x + resample_pos_embed(self.pos_embed, grid, self.base_grid)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        set_grid(self.blocks, grid)
        return x, grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)  # [B, prefix + N, D]

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
        """Features after selected blocks (timm's interface): NCHW maps or NLC tokens, no prefix."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x, (gh, gw) = self._embed(x)
        feats = []
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take:
                y = (self.norm(x) if norm else x)[:, self.num_prefix_tokens:]
                feats.append(rearrange(y, "b (h w) d -> b d h w", h=gh).contiguous()
                             if output_fmt == "NCHW" else y)
        if intermediates_only:
            return feats
        return self.norm(x), feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        return prune_layers(self, "blocks", indices, prune_norm, prune_head)

    @staticmethod
    def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: "IsotropicEncoder"
                             ) -> Dict[str, torch.Tensor]:
        """Strip wrapper prefixes; resample a position table made for another (square) grid."""
        out = strip_prefixes(state_dict)
        v = out.get("pos_embed")
        if v is not None and model.pos_embed is not None and v.shape != model.pos_embed.shape:
            n = int(round(v.shape[1] ** 0.5))
            out["pos_embed"] = resample_pos_embed(v, model.base_grid, (n, n))
        return out


# ------------------------------------------------------------------ hierarchical encoders

class PatchMerging2d(nn.Module):
    """Swin / VMamba-v0 downsampling of ``[B, C, H, W]``: 2x2 neighbours concatenated, LayerNorm(4C),
    Linear(4C -> out_dim)."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, device=device, dtype=dtype)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b c (h i) (w j) -> b h w (i j c)", i=2, j=2)
        return rearrange(self.reduction(self.norm(x)), "b h w c -> b c h w")


class Stage(nn.Module):
    """``downsample`` then ``blocks`` on ``[B, C, H, W]``.

    With ``tokens=True`` the blocks run on tokens ``[B, H*W, C]`` (mixers told the grid), or, with a
    ``window``, on the tokens of each ``window x window`` tile (clipped to the grid, zero-padded to
    a multiple as MambaVision does); with ``tokens=False`` they run on the map itself.
    """

    def __init__(self, downsample: Optional[nn.Module], blocks: Sequence[nn.Module], *,
                 tokens: bool = True, window: Optional[int] = None) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.tokens, self.window = tokens, window
        self.grad_checkpointing = False

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        x = self.downsample(x)
        if not self.tokens:
            return self._run(x)
        B, C, H, W = x.shape
        wh, ww = (H, W) if self.window is None else (min(self.window, H), min(self.window, W))
        ph, pw = -H % wh, -W % ww
        x = F.pad(x, (0, pw, 0, ph))
        set_grid(self.blocks, (wh, ww))
        t = rearrange(x, "b c (nh wh) (nw ww) -> (b nh nw) (wh ww) c", wh=wh, ww=ww)
        t = self._run(t)
        x = rearrange(t, "(b nh nw) (wh ww) c -> b c (nh wh) (nw ww)", b=B, nh=(H + ph) // wh, wh=wh)
        return x[:, :, :H, :W]


class HierarchicalEncoder(nn.Module):
    """timm interface of the four-stage encoders.

    Subclasses build ``self.stem`` (stride 4) and ``self.stages`` (a ModuleList of :class:`Stage`,
    stride 2 each after the first), then call :meth:`_finish`.  ``forward_features`` returns the
    normalised last map ``[B, C, H/32, W/32]``; any input size divisible by 32 works.
    """

    stride = 32

    def _finish(self, dims: Sequence[int], in_chans: int, num_classes: int, global_pool: str,
                drop_rate: float, norm: nn.Module, device=None) -> None:
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.in_chans, self.dims = in_chans, list(dims)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f"stages.{i}")
                             for i, d in enumerate(dims)]
        self.norm = norm
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes, device=device) if num_classes > 0 else nn.Identity()
        init_weights(self)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_chans, self.stride)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)  # [B, C, H/32, W/32]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs (timm's interface), NCHW; ``norm`` applies the final norm to the last one."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for a hierarchical encoder, got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        check_image(x, self.in_chans, self.stride)
        x = self.stem(x)
        feats = []
        last = len(self.stages) - 1
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                feats.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return feats
        return self.norm(x) if len(stages) == len(self.stages) else x, feats

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        return prune_layers(self, "stages", indices, prune_norm, prune_head)

    @staticmethod
    def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module
                             ) -> Dict[str, torch.Tensor]:
        """Strip wrapper prefixes (DDP ``module.``, EMA ``model.``)."""
        return strip_prefixes(state_dict)
