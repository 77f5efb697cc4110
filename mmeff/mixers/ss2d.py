"""SS2D: VMamba's 2D selective-scan layer, and its PlainMamba and LocalMamba variants.

VMamba (https://arxiv.org/abs/2401.10166), SS2D as in its v2 ("VMambav2") configs::

    x -> in_proj -> depthwise k x k conv -> SiLU -> K scan paths -> per-path x_proj / dt_proj / A / D
      -> selective scan -> paths merged back to grid order -> LayerNorm -> out_proj

The K paths come from any registered scan (``'cross'``, VMamba's four directions, by default).
All paths run in one ``selective_scan_fn`` call, folded into channels (``u[B, K*E, L]``, with
``B``/``C`` grouped per path), as VMamba does.  Options cover the relatives:

- PlainMamba (https://arxiv.org/abs/2403.17695): ``scan='snake4'``, ``shared_ssm=True`` (one set
  of SSM parameters for all paths), ``direction_embed=True`` (a learned offset of ``B`` per step
  direction: start / right / left / up / down, plus one for a jump of a non-continuous scan),
  ``gate=True`` (output ``* silu(z)``), a 7x7 conv, biased projections, no out-norm.
- LocalMamba (https://arxiv.org/abs/2403.09338): windowed and global paths mixed (the
  ``'localmamba'`` scan of :mod:`mmeff.encoders.localmamba`), ``path_attn=True`` (a channel
  attention on each path's output before the merge, shared by the paths) and, for LocalVim,
  ``conv='1d'`` (a causal depthwise conv along each path, one per path, as in Vim); LocalVim gates
  each path before its channel attention, here the single gate comes after the merge.

Parameters (E = ``ssm_ratio * dim``, R = ``dt_rank``, N = ``d_state``, P = K paths, or 1 with
``shared_ssm``): ``in_proj`` D x E (2E with ``gate``), conv E k^2 (+E), ``x_proj`` P (R + 2N) E,
``dt_proj`` P (R E + E), ``A_log`` P E N, ``D`` P E, out-norm 2E, ``out_proj`` E D — VMamba-T's
layer at width 96 (E 192, R 6, N 1, K 4) has 52.0k, as its ``SS2D``.

The grid ``(H, W)`` is given at construction, by :meth:`SS2D.set_grid` or per call
(``forward(x, grid=...)``); tokens are in raster order.  Without a grid the L tokens are one row.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_positive
from ..layers.conv import ShortConv
from ..ops.selective_scan import selective_scan_fn
from ..scans import Scan, check_grid, create_scan
from .base import Mixer, register_mixer
from .mamba import dt_bias_init

STEP_DIRECTIONS = ("start", "right", "left", "up", "down", "jump")


@functools.lru_cache(maxsize=256)
def step_directions(scan: Scan) -> torch.Tensor:
    """``[K, L]`` index into :data:`STEP_DIRECTIONS` of the step that reaches each position of each
    path of a 2D ``scan`` (position 0 is ``start``; a step to a non-adjacent cell is ``jump``)."""
    W = scan.grid[1]
    i, j = torch.div(scan.paths, W, rounding_mode="floor"), scan.paths % W  # [K, L]
    di, dj = i.diff(dim=1), j.diff(dim=1)
    step = torch.full_like(di, STEP_DIRECTIONS.index("jump"))
    for name, (a, b) in (("right", (0, 1)), ("left", (0, -1)), ("up", (-1, 0)), ("down", (1, 0))):
        step[(di == a) & (dj == b)] = STEP_DIRECTIONS.index(name)
    return torch.cat([torch.zeros_like(scan.paths[:, :1]), step], dim=1)


class PathChannelAttention(nn.Module):
    """LocalMamba's channel attention on one path's output: ``y * sigmoid(W2 gelu(W1 mean_L(LN(y))))``.

    The mean over tokens does not depend on their order, so it runs on path-ordered outputs.
    """

    def __init__(self, channels: int, ratio: float = 0.125, device=None, dtype=None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        hidden = max(1, int(channels * ratio))
        self.norm = nn.LayerNorm(channels, **fk)
        self.reduce = nn.Linear(channels, hidden, **fk)
        self.expand = nn.Linear(hidden, channels, **fk)

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # [B, L, E]
        s = self.norm(y).mean(dim=1, keepdim=True)  # [B, 1, E]
        return y * torch.sigmoid(self.expand(F.gelu(self.reduce(s))))


@register_mixer("ss2d")
class SS2D(Mixer):
    """2D selective scan along the K paths of a scan (see the module docstring).

    Args:
        dim: width D.
        causal: must be False (the paths cover the grid in several directions).
        grid: default token grid ``(H, W)``.
        scan, scan_kwargs: the registered 2D scan giving the K paths, and its arguments.
        d_state: N; ssm_ratio: E / D; dt_rank: R (``'auto'``: ceil(D / 16)).
        conv: ``'2d'`` (depthwise ``d_conv`` x ``d_conv`` conv on the grid, then SiLU), ``'1d'``
            (causal depthwise conv of size ``d_conv`` along each path, one per path, then SiLU) or
            None (SiLU only).
        conv_bias: bias of the conv.
        gate: split ``in_proj`` into (x, z) and multiply the output by ``silu(z)``.
        out_norm: LayerNorm over E after the merge (VMamba).
        bias: bias of ``in_proj`` / ``out_proj``.
        shared_ssm: one ``x_proj`` / ``dt_proj`` / ``A`` / ``D`` for all paths (PlainMamba).
        direction_embed: learned ``B`` offset per step direction (PlainMamba).
        path_attn: channel attention on each path's output before the merge (LocalMamba).
        merge: ``'mean'`` or ``'sum'`` over paths.
        dt_min, dt_max, dt_init_floor: ``dt`` bias initialisation (Mamba's).
    """

    def __init__(self, dim: int, *, causal: bool = False, grid: Optional[Sequence[int]] = None,
                 scan: str = "cross", scan_kwargs: Optional[dict] = None, d_state: int = 1,
                 ssm_ratio: float = 2.0, dt_rank="auto", conv: Optional[str] = "2d", d_conv: int = 3,
                 conv_bias: bool = False, gate: bool = False, out_norm: bool = True, bias: bool = False,
                 shared_ssm: bool = False, direction_embed: bool = False, path_attn: bool = False,
                 merge: str = "mean", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, device=None, dtype=None) -> None:
        if causal:
            raise ValueError("ss2d scans a 2D grid along several paths and is bidirectional; causal "
                             "must be False, got True")
        super().__init__(dim, causal=False)
        if conv not in ("2d", "1d", None):
            raise ValueError(f"conv must be '2d', '1d' or None, got {conv!r}")
        if merge not in ("mean", "sum"):
            raise ValueError(f"merge must be 'mean' or 'sum', got {merge!r}")
        check_positive("d_state", d_state)
        check_positive("d_conv", d_conv)
        if conv == "2d" and d_conv % 2 == 0:
            raise ValueError(f"d_conv must be odd for conv='2d' (a centred k x k conv), got {d_conv}")
        if not ssm_ratio > 0:
            raise ValueError(f"ssm_ratio must be > 0, got {ssm_ratio!r}")
        self.grid: Optional[Tuple[int, int]] = None if grid is None else check_grid(grid, 2)
        self.scan_name, self.scan_kwargs = scan, dict(scan_kwargs or {})
        K = create_scan(scan, self.grid or (1, 1), **self.scan_kwargs).num_paths  # validates the scan
        E = int(ssm_ratio * dim)
        R = math.ceil(dim / 16) if dt_rank == "auto" else dt_rank
        check_positive("dt_rank", R)
        P = 1 if shared_ssm else K
        self.d_inner, self.d_state, self.dt_rank, self.num_paths = E, d_state, R, K
        self.gate, self.merge, self.conv = gate, merge, conv
        self._dt_init = (dt_min, dt_max, dt_init_floor)
        fk = dict(device=device, dtype=dtype)
        self.in_proj = nn.Linear(dim, 2 * E if gate else E, bias=bias, **fk)
        self.conv2d = (nn.Conv2d(E, E, d_conv, padding=d_conv // 2, groups=E, bias=conv_bias, **fk)
                       if conv == "2d" else None)
        self.conv1d = (ShortConv(K * E, d_conv, causal=True, activation="silu", bias=conv_bias, **fk)
                       if conv == "1d" else None)
        self.x_proj_weight = nn.Parameter(torch.empty(P, R + 2 * d_state, E, **fk))  # [P, R+2N, E]
        self.dt_proj_weight = nn.Parameter(torch.empty(P, E, R, **fk))  # [P, E, R]
        self.dt_proj_bias = nn.Parameter(torch.empty(P, E, **fk))  # [P, E]
        self.A_log = nn.Parameter(torch.empty(P * E, d_state, device=device))  # [P*E, N], fp32
        self.D = nn.Parameter(torch.empty(P * E, device=device))  # [P*E], fp32
        self.A_log._no_weight_decay = self.D._no_weight_decay = True
        self.direction_B = (nn.Parameter(torch.empty(len(STEP_DIRECTIONS), d_state, **fk))
                            if direction_embed else None)
        self.path_attn = PathChannelAttention(E, **fk) if path_attn else None
        self.out_norm = nn.LayerNorm(E, **fk) if out_norm else None
        self.out_proj = nn.Linear(E, dim, bias=bias, **fk)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation of the SSM parameters (projections keep nn.Linear's)."""
        E, R, P = self.d_inner, self.dt_rank, self.x_proj_weight.shape[0]
        self.x_proj_weight.uniform_(-E ** -0.5, E ** -0.5)
        self.dt_proj_weight.uniform_(-R ** -0.5, R ** -0.5)
        dt_min, dt_max, floor = self._dt_init
        self.dt_proj_bias.copy_(dt_bias_init(P * E, dt_min, dt_max, floor, self.D.device).view(P, E))
        # S4D-real init: A = -(1, 2, ..., N) in every channel
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(A).expand_as(self.A_log))
        self.D.fill_(1.0)
        if self.direction_B is not None:
            nn.init.trunc_normal_(self.direction_B, std=0.02)

    def set_grid(self, grid: Sequence[int]) -> None:
        """Set the default token grid ``(H, W)``."""
        self.grid = check_grid(grid, 2)

    def forward(self, x: torch.Tensor, *, grid: Optional[Sequence[int]] = None) -> torch.Tensor:
        """``x[B, L, D] -> [B, L, D]``; ``grid`` (``H * W == L``) overrides the stored grid."""
        self._check_input(x)
        Bsz, L, _ = x.shape
        grid = check_grid(grid, 2) if grid is not None else (self.grid or (1, L))
        if grid[0] * grid[1] != L:
            raise ValueError(f"grid {grid} has {grid[0] * grid[1]} tokens but x has L={L}")
        scan = create_scan(self.scan_name, grid, device=x.device, **self.scan_kwargs)
        K, E, N, R = self.num_paths, self.d_inner, self.d_state, self.dt_rank
        if scan.num_paths != K:
            raise ValueError(f"scan {self.scan_name!r} gives {scan.num_paths} paths on grid {grid}, "
                             f"but this layer was built for {K}")
        u = self.in_proj(x)  # [B, L, E] or [B, L, 2E]
        u, z = u.chunk(2, dim=-1) if self.gate else (u, None)
        if self.conv2d is not None:
            u = rearrange(u, "b (h w) e -> b e h w", h=grid[0])
            u = rearrange(self.conv2d(u), "b e h w -> b (h w) e")
        if self.conv1d is None:
            u = F.silu(u)
        us = rearrange(scan.gather(u), "(b k) l e -> b l (k e)", k=K)  # paths side by side
        if self.conv1d is not None:
            us = self.conv1d(us)
        us = rearrange(us, "b l (k e) -> b k l e", k=K)
        P = self.x_proj_weight.shape[0]
        x_dbl = torch.einsum("bkle,kce->bklc", us, self.x_proj_weight.expand(K, -1, -1))
        dt, Bs, Cs = x_dbl.split([R, N, N], dim=-1)
        dt = torch.einsum("bklr,ker->bkle", dt, self.dt_proj_weight.expand(K, -1, -1))
        Bs, Cs = (rearrange(t, "b k l n -> b k n l") for t in (Bs, Cs))  # [B, K, N, L]
        if self.direction_B is not None:
            bias = self.direction_B[step_directions(scan)]  # [K, L, N]
            Bs = Bs + rearrange(bias, "k l n -> k n l").to(Bs.dtype)
        y = selective_scan_fn(
            rearrange(us, "b k l e -> b (k e) l"), rearrange(dt, "b k l e -> b (k e) l"),
            -torch.exp(self.A_log.float()).repeat(K // P, 1), Bs.contiguous(), Cs.contiguous(),
            D=self.D.float().repeat(K // P), delta_bias=self.dt_proj_bias.float().reshape(-1).repeat(K // P),
            delta_softplus=True)  # [B, K*E, L]
        y = rearrange(y, "b (k e) l -> (b k) l e", k=K)
        if self.path_attn is not None:
            y = self.path_attn(y)
        y = scan.merge(y, self.merge)  # [B, L, E]
        if self.out_norm is not None:
            y = self.out_norm(y)
        if z is not None:
            y = y * F.silu(z)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.scan_kwargs.items())
        shared = ", shared_ssm" if self.x_proj_weight.shape[0] == 1 < self.num_paths else ""
        return (f"{super().extra_repr()}, scan={self.scan_name!r}{kw}, K={self.num_paths}, "
                f"d_inner={self.d_inner}, d_state={self.d_state}, conv={self.conv!r}{shared}")
