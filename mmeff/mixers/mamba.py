"""Mamba (Mamba-1): the selective state-space block, and Vision Mamba's bidirectional form.

Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Gu, Dao 2023),
https://arxiv.org/abs/2312.00752; layer as in mamba_ssm's ``Mamba``: ``in_proj`` to ``x`` and ``z``,
a causal depthwise conv (``d_conv`` 4) with SiLU on ``x``, ``x_proj`` to ``(dt, B, C)``, ``dt_proj``
up to the channels, the selective scan (S6) with ``A = -exp(A_log)`` and skip ``D``, the gate
``silu(z)`` and ``out_proj``.

``causal=False`` is Vision Mamba's bidirectional block ("v2", Zhu et al. 2024,
https://arxiv.org/abs/2401.09417): ``in_proj`` and ``out_proj`` are shared, the backward direction
has its own conv, ``x_proj``, ``dt_proj``, ``A_log`` and ``D`` and runs on the flipped sequence
(an anti-causal conv and the scan with ``reverse=True``), and the two directions are averaged.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_positive
from ..layers import ShortConv
from ..ops.selective_scan import selective_scan_fn
from .base import Mixer, register_mixer


def dt_bias_init(size: int, dt_min: float, dt_max: float, dt_init_floor: float,
                 device=None, dtype=None) -> torch.Tensor:
    """Mamba's time-step bias: ``softplus^-1(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]``.

    So that ``softplus(bias) = dt`` at init (``dt`` floored at ``dt_init_floor``).
    """
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = torch.rand(size, device=device)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
    return (dt + torch.log(-torch.expm1(-dt))).to(dtype or torch.float32)


class SelectiveSSM(nn.Module):
    """One direction of the Mamba block after ``in_proj``: conv, ``x_proj``, ``dt_proj``, S6, gate.

    Args:
        d_inner: channels E.
        d_state: state size N per channel.
        d_conv: depthwise conv kernel size.
        dt_rank: rank of the time-step projection.
        conv_bias: bias in the conv.
        dt_min, dt_max, dt_init_floor, dt_scale: time-step init (see :func:`dt_bias_init`).
    """

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int, conv_bias: bool,
                 dt_min: float, dt_max: float, dt_init_floor: float, dt_scale: float,
                 device=None, dtype=None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv = ShortConv(d_inner, d_conv, causal=True, activation="silu", bias=conv_bias, **fk)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True, **fk)
        std = dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor, device))
        # S4D-real init: A = -(1, 2, ..., N) in every channel
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A).to(dtype or torch.float32))
        self.D = nn.Parameter(torch.ones(d_inner, device=device, dtype=dtype or torch.float32))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True

    def forward(self, x: torch.Tensor, z: torch.Tensor, conv_state: Optional[torch.Tensor] = None,
                ssm_state: Optional[torch.Tensor] = None, reverse: bool = False):
        """``x, z: [B, L, E]`` -> ``y[B, L, E]``, or ``(y, conv_state, ssm_state)`` when streaming.

        ``reverse`` runs right-to-left: the conv on the flipped sequence and the scan reversed.
        """
        if conv_state is not None:
            x, conv_state = self.conv.step(x, conv_state)
        elif reverse:
            x = self.conv(x.flip(1)).flip(1)
        else:
            x = self.conv(x)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # [B, L, E]; the bias goes in the scan, in fp32
        out = selective_scan_fn(
            rearrange(x, "b l e -> b e l"), rearrange(dt, "b l e -> b e l"), -torch.exp(self.A_log.float()),
            rearrange(B, "b l n -> b n l"), rearrange(C, "b l n -> b n l"), self.D.float(),
            z=rearrange(z, "b l e -> b e l"), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            return_last_state=ssm_state is not None, initial_state=ssm_state, reverse=reverse)
        if ssm_state is None:
            return rearrange(out, "b e l -> b l e")
        y, ssm_state = out
        return rearrange(y, "b e l -> b l e"), conv_state, ssm_state


@register_mixer("mamba")
class Mamba(Mixer):
    """Mamba-1 block (causal), or Vision Mamba's bidirectional v2 block (``causal=False``).

    Parameters (E = ``expand * dim``, R = ``dt_rank``, N = ``d_state``, k = ``d_conv``), as in
    mamba_ssm's ``Mamba`` with its defaults: ``2*D*E`` (in_proj) + ``k*E + E`` (conv) +
    ``E*(R + 2N)`` (x_proj) + ``R*E + E`` (dt_proj) + ``E*N`` (A_log) + ``E`` (D) + ``E*D`` (out_proj).
    The bidirectional block adds a second conv, x_proj, dt_proj, A_log and D (Vim).

    Args:
        dim: model width D.
        causal: causal (and streaming) if True; Vim's bidirectional block if False.
        d_state: state size N per channel (16).
        d_conv: depthwise conv kernel (4).
        expand: E = expand * dim (2).
        dt_rank: rank of the time-step projection; None means ``ceil(dim / 16)``.
        dt_min, dt_max: range of the initial time steps (log-uniform); dt_init_floor: their floor.
        dt_scale: scale of the ``dt_proj`` weight init (``dt_rank ** -0.5 * dt_scale``).
        conv_bias: bias in the depthwise conv.
        bias: bias in ``in_proj`` and ``out_proj``.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, d_state: int = 16, d_conv: int = 4,
                 expand: float = 2, dt_rank: Optional[int] = None, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, dt_scale: float = 1.0,
                 conv_bias: bool = True, bias: bool = False, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("d_state", d_state)
        check_positive("d_conv", d_conv)
        d_inner = expand * dim
        if d_inner != int(d_inner) or d_inner <= 0:
            raise ValueError(f"expand * dim must be a positive int, got {expand} * {dim}")
        self.d_inner, self.d_state = int(d_inner), d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        check_positive("dt_rank", self.dt_rank)
        fk = dict(device=device, dtype=dtype)
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias, **fk)
        branch = dict(d_inner=self.d_inner, d_state=d_state, d_conv=d_conv, dt_rank=self.dt_rank,
                      conv_bias=conv_bias, dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                      dt_scale=dt_scale, **fk)
        self.ssm = SelectiveSSM(**branch)
        self.ssm_backward = None if causal else SelectiveSSM(**branch)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        self._check_input(x)
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # [B, L, E] each
        y = self.ssm(xs, z)
        if self.ssm_backward is not None:
            y = 0.5 * (y + self.ssm_backward(xs, z, reverse=True))
        return self.out_proj(y)

    def init_state(self, batch: int, device=None, dtype=None) -> Dict[str, torch.Tensor]:
        """Conv inputs ``[B, E, k-1]`` and the fp32 SSM state ``[B, E, N]``."""
        self._require_causal("init_state")
        device = device or self.in_proj.weight.device
        return {"conv": self.ssm.conv.init_state(batch, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32)}

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict]:
        self._require_causal("step")
        self._check_input(x)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        y, conv_state, ssm_state = self.ssm(xs, z, state["conv"], state["ssm"])
        return self.out_proj(y), {"conv": conv_state, "ssm": ssm_state}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, d_inner={self.d_inner}, d_state={self.d_state}, "
                f"dt_rank={self.dt_rank}")
