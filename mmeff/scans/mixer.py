"""``ScannedMixer``: run any sequence mixer along the K paths of a scan and merge the results.

This is the multi-directional pattern of the vision SSMs (VMamba's SS2D cross scan, PlainMamba's
four snakes, LocalMamba's windowed scans, VideoMamba's spatiotemporal orders) for any mixer: the
tokens of a grid are gathered along each path, the mixer runs on each ordering (one shared mixer on
``[B*K, N, D]``, or K separate mixers), and the outputs go back to grid order and are averaged,
summed or mixed by a learned softmax gate over paths.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence, Union

import torch
from einops import rearrange
from torch import nn

from ..mixers.base import Mixer, create_mixer
from .base import Scan, check_grid, create_scan, scan_ndim

_MERGES = ("mean", "sum", "gate")


class ScannedMixer(Mixer):
    """A mixer applied along the K paths of a scan, merged back to grid order.

    Bidirectional by construction (every token sees the grid through the paths), so it has no
    ``step``.

    Args:
        mixer: an ``nn.Module`` mapping ``[B, L, D] -> [B, L, D]``, or a registered mixer name built
            with ``create_mixer(mixer, dim, **mixer_kwargs)``.
        scan: a scan name, or a :class:`~mmeff.scans.Scan` (its name and keyword arguments are
            used; the grid may change between calls).
        grid: the default grid ``(H, W)`` or ``(T, H, W)``; taken from ``scan`` when it is a Scan.
        dim: width D; needed for a mixer name, otherwise read from ``mixer.dim`` when absent.
        shared: one mixer for all paths (run on ``[B*K, N, D]``) if True; else K separate mixers
            (built K times from a name, or deep copies of a module: equal at start, trained apart).
        merge: ``'mean'``, ``'sum'`` or ``'gate'`` (softmax over paths of a learned weight,
            initialised to uniform, i.e. to the mean).
        gate_per_channel: the gate weight is ``[K, D]`` (one softmax over paths per channel)
            instead of ``[K]``.
        mixer_kwargs: keyword arguments for a mixer given by name.
        scan_kwargs: keyword arguments for a scan given by name (window sizes, stride, layer...).
        device, dtype: factory arguments for the gate and for mixers built by name.
    """

    def __init__(self, mixer: Union[str, nn.Module], scan: Union[str, Scan],
                 grid: Optional[Sequence[int]] = None, *, dim: Optional[int] = None,
                 shared: bool = True, merge: str = "mean", gate_per_channel: bool = False,
                 mixer_kwargs: Optional[dict] = None, scan_kwargs: Optional[dict] = None,
                 device=None, dtype=None) -> None:
        if isinstance(mixer, nn.Module):
            dim = getattr(mixer, "dim", None) if dim is None else dim
        elif not isinstance(mixer, str):
            raise ValueError(f"mixer must be an nn.Module or a mixer name, got {type(mixer).__name__}")
        if dim is None:
            raise ValueError("dim must be given when mixer is a name or a module without .dim")
        super().__init__(dim, causal=False)
        if merge not in _MERGES:
            raise ValueError(f"merge must be one of {_MERGES}, got {merge!r}")
        if isinstance(scan, Scan):
            if scan_kwargs:
                raise ValueError("scan_kwargs must be empty when scan is a Scan object, got "
                                 f"{scan_kwargs!r}")
            grid = scan.grid if grid is None else grid
            scan, scan_kwargs = scan.name, scan.kwargs
        if grid is None:
            raise ValueError("grid must be given, e.g. (H, W) or (T, H, W), got None")
        self.scan_name, self.scan_kwargs = scan, dict(scan_kwargs or {})
        first = create_scan(scan, grid, **self.scan_kwargs)  # validates name, grid and kwargs
        self.grid, self.num_paths = first.grid, first.num_paths
        self.shared, self.merge = shared, merge

        K = 1 if shared else self.num_paths
        fk = {k: v for k, v in dict(device=device, dtype=dtype).items() if v is not None}
        if isinstance(mixer, str):
            mixers = [create_mixer(mixer, dim, **fk, **(mixer_kwargs or {})) for _ in range(K)]
        else:
            if mixer_kwargs:
                raise ValueError("mixer_kwargs must be empty when mixer is a module, got "
                                 f"{mixer_kwargs!r}")
            mixers = [mixer] + [copy.deepcopy(mixer) for _ in range(K - 1)]
        self.mixers = nn.ModuleList(mixers)
        if merge == "gate":
            shape = (self.num_paths, dim) if gate_per_channel else (self.num_paths,)
            self.gate = nn.Parameter(torch.zeros(shape, device=device, dtype=dtype))
        else:
            self.register_parameter("gate", None)

    def forward(self, x: torch.Tensor, grid: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Mix ``x[B, N, D]`` (N tokens of ``grid``, default the one given at construction)."""
        self._check_input(x)
        grid = self.grid if grid is None else check_grid(grid, scan_ndim(self.scan_name))
        scan = create_scan(self.scan_name, grid, device=x.device, **self.scan_kwargs)
        K = scan.num_paths
        if K != self.num_paths and (len(self.mixers) > 1 or self.gate is not None):
            raise ValueError(f"grid {grid} gives {K} paths for scan {self.scan_name!r}, but this "
                             f"ScannedMixer has per-path parameters for {self.num_paths}")
        xs = scan.gather(x)  # [B*K, N, D]
        if len(self.mixers) == 1:
            ys = self.mixers[0](xs)
        else:
            xs = rearrange(xs, "(b k) n d -> k b n d", k=K)
            ys = torch.stack([m(xk) for m, xk in zip(self.mixers, xs)])  # [K, B, N, D]
            ys = rearrange(ys, "k b n d -> (b k) n d")
        if self.gate is not None:
            return scan.merge(ys, "sum", weights=self.gate.softmax(dim=0))
        return scan.merge(ys, self.merge)

    def extra_repr(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.scan_kwargs.items())
        return (f"{super().extra_repr()}, scan={self.scan_name!r}{kw}, grid={self.grid}, "
                f"K={self.num_paths}, shared={self.shared}, merge={self.merge!r}")
