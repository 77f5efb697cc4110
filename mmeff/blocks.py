"""The residual block: ``x + mixer(norm(x))``, then ``x + ffn(norm(x))``; residuals live here only.

The feed-forward is an MLP (timm's ``Mlp`` by default, or any ``ffn_layer``), a mixture of experts,
or nothing (``mlp_ratio=0``, as in Vim).  ``residual_in_fp32`` keeps the residual stream in fp32
under autocast (Vim, Mamba), which stops bf16 drift over deep stacks.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn

from .mixers.base import resolve_mixer


class Block(nn.Module):
    """Pre-norm residual block around any mixer.

    Args:
        dim: width D.
        mixer: a registered mixer name, a callable ``(dim, **kw) -> nn.Module``, or a built module.
        mixer_kwargs: keyword arguments for the mixer (when given by name or callable).
        mlp_ratio: hidden width of the feed-forward as a multiple of ``dim``; 0 means no feed-forward.
        ffn_layer: feed-forward class ``(in_features, hidden_features, act_layer=, ...)``; a MoE layer
            fits here too.
        norm_layer, act_layer: injected layers.
        drop_path: stochastic-depth rate for both branches.
        layer_scale_init: if set, LayerScale on both branches with this init.
        residual_in_fp32: keep the residual stream in fp32.
    """

    def __init__(self, dim: int, mixer: Any = "attention", *, mixer_kwargs: Optional[dict] = None,
                 mlp_ratio: float = 4.0, ffn_layer: Callable[..., nn.Module] = Mlp,
                 norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
                 act_layer: Callable[..., nn.Module] = nn.GELU, drop_path: float = 0.0,
                 layer_scale_init: Optional[float] = None, residual_in_fp32: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.residual_in_fp32 = residual_in_fp32
        self.norm1 = norm_layer(dim, **fk)
        self.mixer = mixer if isinstance(mixer, nn.Module) else resolve_mixer(
            mixer, dim, mixer_kwargs, **fk)
        self.ls1 = LayerScale(dim, layer_scale_init, **fk) if layer_scale_init else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim, **fk)
            self.ffn = ffn_layer(dim, int(dim * mlp_ratio), act_layer=act_layer, **fk)
            self.ls2 = LayerScale(dim, layer_scale_init, **fk) if layer_scale_init else nn.Identity()
        else:
            self.norm2 = self.ffn = self.ls2 = None

    def _add(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if self.residual_in_fp32:
            return x.float() + self.drop_path(branch).float()
        return x + self.drop_path(branch)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        if self.ffn is None:
            return x
        return self._add(x, self.ls2(self.ffn(self.norm2(x.to(self._dtype(x))))))

    def _dtype(self, x: torch.Tensor) -> torch.dtype:
        # the branches run in the norm's parameter dtype; under autocast the ops pick their own
        return self.norm1.weight.dtype if getattr(self.norm1, "weight", None) is not None else x.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        x = self._add(x, self.ls1(self.mixer(self.norm1(x.to(self._dtype(x))))))
        return self._ffn(x)

    def init_state(self, batch: int, device=None, dtype=None) -> Any:
        """The mixer's streaming state (the feed-forward is per-token and keeps none)."""
        return self.mixer.init_state(batch, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: Any) -> Tuple[torch.Tensor, Any]:
        """Streaming form of :meth:`forward` (needs a causal mixer)."""
        y, state = self.mixer.step(self.norm1(x.to(self._dtype(x))), state)
        return self._ffn(self._add(x, self.ls1(y))), state
