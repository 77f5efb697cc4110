"""Mamba-2: the SSD block (scalar decay per head, state ``[P, N]`` per head).

Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space
Duality (Dao, Gu 2024), https://arxiv.org/abs/2405.21060; layer as in mamba_ssm's ``Mamba2``: one
``in_proj`` to ``(z, x, B, C, dt)``, a depthwise conv with SiLU over ``(x, B, C)``, the SSD scan
with ``A = -exp(A_log)`` per head, ``dt = softplus(dt + dt_bias)`` and skip ``D``, a gated RMSNorm
``norm(y * silu(z))`` (grouped by ``ngroups``) and ``out_proj``.

mamba_ssm's kernels want ``expand * dim / headdim`` (the number of heads) to be a multiple of 8;
the chunked PyTorch scan here has no such limit, so any head count works.

``causal=False`` runs the same scan forward and reversed (``reverse=True``) on the same inputs and
averages the two; all parameters are shared and the conv is centred rather than causal (one conv
serves both directions, so it looks both ways).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_divisible, check_positive
from ..layers import ShortConv
from ..ops.ssd import mamba_chunk_scan_combined
from .base import Mixer, register_mixer
from .mamba import dt_bias_init


class GatedRmsNorm(nn.Module):
    """``RMSNorm(y * silu(z)) * weight`` with the RMS taken over groups of ``group_size`` channels
    (Mamba-2's output norm, gate before norm)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        check_divisible("dim", dim, "group_size", group_size)
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # [..., dim] each
        dtype = y.dtype
        y = rearrange(y.float() * F.silu(z.float()), "... (g c) -> ... g c", c=self.group_size)
        y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + self.eps)
        return (rearrange(y, "... g c -> ... (g c)") * self.weight.float()).to(dtype)


@register_mixer("mamba2")
class Mamba2(Mixer):
    """Mamba-2 block (causal), or its bidirectional form (``causal=False``).

    Parameters (E = ``expand * dim``, H = E / ``headdim``, G = ``ngroups``, N = ``d_state``,
    k = ``d_conv``, Cv = E + 2GN), as mamba_ssm's ``Mamba2`` with its defaults:
    ``D*(2E + 2GN + H)`` (in_proj) + ``k*Cv + Cv`` (conv) + ``3H`` (dt_bias, A_log, D) + ``E`` (norm)
    + ``E*D`` (out_proj).

    Args:
        dim: model width D.
        causal: causal (and streaming) if True; bidirectional (forward + reverse scans) if False.
        d_state: state size N per head (128).
        d_conv: depthwise conv kernel (4).
        expand: E = expand * dim (2).
        headdim: P, channels per head (64); E must divide by it.
        ngroups: G, groups of heads sharing B and C (1).
        chunk_size: SSD chunk length (256); a speed knob only.
        dt_min, dt_max, dt_init_floor: initial time steps, log-uniform (see ``dt_bias_init``).
        a_init_range: range of the initial ``A = exp(A_log)`` (uniform).
        conv_bias: bias in the conv.  bias: bias in ``in_proj`` and ``out_proj``.
        norm_eps: epsilon of the gated RMSNorm.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, d_state: int = 128, d_conv: int = 4,
                 expand: float = 2, headdim: int = 64, ngroups: int = 1, chunk_size: int = 256,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 a_init_range: Tuple[float, float] = (1.0, 16.0), conv_bias: bool = True,
                 bias: bool = False, norm_eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        for name, v in (("d_state", d_state), ("d_conv", d_conv), ("headdim", headdim),
                        ("ngroups", ngroups), ("chunk_size", chunk_size)):
            check_positive(name, v)
        d_inner = expand * dim
        if d_inner != int(d_inner) or d_inner <= 0:
            raise ValueError(f"expand * dim must be a positive int, got {expand} * {dim}")
        d_inner = int(d_inner)
        if d_inner % headdim:
            raise ValueError(f"expand * dim ({expand} * {dim} = {d_inner}) must be divisible by "
                             f"headdim ({headdim})")
        nheads = d_inner // headdim
        check_divisible("number of heads (expand * dim / headdim)", nheads, "ngroups", ngroups)
        if not 0 < a_init_range[0] <= a_init_range[1]:
            raise ValueError(f"a_init_range must be (lo, hi) with 0 < lo <= hi, got {a_init_range}")
        self.d_inner, self.d_state, self.headdim, self.nheads = d_inner, d_state, headdim, nheads
        self.ngroups, self.chunk_size = ngroups, chunk_size
        fk = dict(device=device, dtype=dtype)
        bc = ngroups * d_state
        self.split = [d_inner, d_inner + 2 * bc, nheads]  # z | x B C | dt
        self.in_proj = nn.Linear(dim, sum(self.split), bias=bias, **fk)
        self.conv = ShortConv(d_inner + 2 * bc, d_conv, causal=causal, activation="silu",
                              bias=conv_bias, **fk)
        self.dt_bias = nn.Parameter(dt_bias_init(nheads, dt_min, dt_max, dt_init_floor, device, dtype))
        A = torch.empty(nheads, device=device).uniform_(*a_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype or torch.float32))
        self.D = nn.Parameter(torch.ones(nheads, device=device, dtype=dtype or torch.float32))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRmsNorm(d_inner, d_inner // ngroups, eps=norm_eps, **fk)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias, **fk)

    def _mix(self, x: torch.Tensor, conv_state: Optional[torch.Tensor] = None,
             ssm_state: Optional[torch.Tensor] = None):
        """in_proj -> conv -> SSD -> gated norm -> out_proj; also the new states when streaming."""
        z, xbc, dt = self.in_proj(x).split(self.split, dim=-1)
        if conv_state is None:
            xbc = self.conv(xbc)
        else:
            xbc, conv_state = self.conv.step(xbc, conv_state)
        xs, B, C = xbc.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], -1)
        xs = rearrange(xs, "b l (h p) -> b l h p", p=self.headdim)
        B, C = (rearrange(t, "b l (g n) -> b l g n", g=self.ngroups) for t in (B, C))
        kw = dict(D=self.D.float(), dt_bias=self.dt_bias.float(), dt_softplus=True)
        args = (xs, dt, -torch.exp(self.A_log.float()), B, C, self.chunk_size)
        if ssm_state is not None:
            y, ssm_state = mamba_chunk_scan_combined(*args, initial_states=ssm_state,
                                                     return_final_states=True, **kw)
        else:
            y = mamba_chunk_scan_combined(*args, **kw)
            if not self.causal:
                y = 0.5 * (y + mamba_chunk_scan_combined(*args, reverse=True, **kw))
        out = self.out_proj(self.norm(rearrange(y, "b l h p -> b l (h p)"), z))
        return out, conv_state, ssm_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        self._check_input(x)
        return self._mix(x)[0]

    def init_state(self, batch: int, device=None, dtype=None) -> Dict[str, torch.Tensor]:
        """Conv inputs ``[B, Cv, k-1]`` and the fp32 SSD state ``[B, H, P, N]``."""
        self._require_causal("init_state")
        device = device or self.in_proj.weight.device
        return {"conv": self.conv.init_state(batch, device=device, dtype=dtype),
                "ssm": torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device,
                                   dtype=torch.float32)}

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict]:
        self._require_causal("step")
        self._check_input(x)
        y, conv_state, ssm_state = self._mix(x, state["conv"], state["ssm"])
        return y, {"conv": conv_state, "ssm": ssm_state}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, d_inner={self.d_inner}, nheads={self.nheads}, "
                f"headdim={self.headdim}, d_state={self.d_state}, ngroups={self.ngroups}")
