"""MambaVision's mixer: a selective scan on half the channels beside a symmetric conv branch.

MambaVision (Hatamizadeh, Kautz 2024, https://arxiv.org/abs/2407.08083)::

    x -> in_proj (D -> E) -> halves (x, z)
    x -> symmetric depthwise conv + SiLU -> x_proj / dt_proj / A / D -> selective scan -> y
    z -> symmetric depthwise conv + SiLU                                                  -> z
    concat(y, z) -> out_proj (E -> D)

The scan runs in one direction (as in the paper), so the mixer is not causal (its convolutions look
both ways) but not a forward + backward pair either; ``causal=True`` is refused.

Parameters (E = ``expand * dim``, h = E / 2, R = ``dt_rank``, N = ``d_state``, k = ``d_conv``):
``D E`` (in_proj) + ``2 k h`` (convs, no bias) + ``h (R + 2N)`` (x_proj) + ``R h + h`` (dt_proj) +
``h N`` (A_log) + ``h`` (D) + ``E D`` (out_proj), as MambaVision's ``MambaVisionMixer``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_positive
from ..layers import ShortConv
from ..ops.selective_scan import selective_scan_fn
from .base import Mixer, register_mixer
from .mamba import dt_bias_init


@register_mixer("mambavision")
class MambaVisionMixer(Mixer):
    """MambaVision's SSM + conv mixer (see the module docstring).

    Args:
        dim: width D.
        causal: must be False.
        d_state: N (8 in MambaVision).
        d_conv: kernel of the two symmetric depthwise convs (3).
        expand: E = expand * dim (1); E must be even.
        dt_rank: R; None means ``ceil(dim / 16)``.
        conv_bias: bias in the convs; bias: bias in ``in_proj`` / ``out_proj``.
        dt_min, dt_max, dt_init_floor: time-step init (Mamba's).
    """

    def __init__(self, dim: int, *, causal: bool = False, d_state: int = 8, d_conv: int = 3,
                 expand: float = 1.0, dt_rank: Optional[int] = None, conv_bias: bool = False,
                 bias: bool = False, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, device=None, dtype=None) -> None:
        if causal:
            raise ValueError("the MambaVision mixer uses symmetric convolutions and is not causal; "
                             "causal must be False, got True")
        super().__init__(dim, causal=False)
        check_positive("d_state", d_state)
        check_positive("d_conv", d_conv)
        E = int(expand * dim)
        if E <= 0 or E % 2:
            raise ValueError(f"expand * dim must be a positive even int, got {expand} * {dim}")
        h = E // 2
        self.d_inner, self.d_state = E, d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        check_positive("dt_rank", self.dt_rank)
        fk = dict(device=device, dtype=dtype)
        self.in_proj = nn.Linear(dim, E, bias=bias, **fk)
        self.conv_x = ShortConv(h, d_conv, causal=False, activation="silu", bias=conv_bias, **fk)
        self.conv_z = ShortConv(h, d_conv, causal=False, activation="silu", bias=conv_bias, **fk)
        self.x_proj = nn.Linear(h, self.dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, h, bias=True, **fk)
        std = self.dt_rank ** -0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(h, dt_min, dt_max, dt_init_floor, device))
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(h, 1)
        self.A_log = nn.Parameter(torch.log(A))  # [h, N], fp32
        self.D = nn.Parameter(torch.ones(h, device=device))
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.out_proj = nn.Linear(E, dim, bias=bias, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        self._check_input(x)
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, L, h] each
        u, z = self.conv_x(u), self.conv_z(z)
        dt, Bs, Cs = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # [B, L, h]; the bias goes in the scan, in fp32
        y = selective_scan_fn(
            rearrange(u, "b l h -> b h l"), rearrange(dt, "b l h -> b h l"), -torch.exp(self.A_log.float()),
            rearrange(Bs, "b l n -> b n l"), rearrange(Cs, "b l n -> b n l"), self.D.float(),
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True)  # [B, h, L]
        return self.out_proj(torch.cat([rearrange(y, "b h l -> b l h"), z], dim=-1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, d_inner={self.d_inner}, d_state={self.d_state}"
