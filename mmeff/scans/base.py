"""The Scan contract (DESIGN.md), the scan registry and the per-(grid, device) cache.

A scan orders the N tokens of a 2D grid ``(H, W)`` or a 3D grid ``(T, H, W)`` along K paths.
Token ``n`` is the row-major index of its grid cell (``n = i * W + j``, or ``(t * H + i) * W + j``).
``paths[k]`` lists the tokens in the order path k visits them; ``inverse[k][n]`` is the position of
token n on path k.
"""
from __future__ import annotations

import functools
import inspect
import math
import operator
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from einops import rearrange

from .._utils import match, unknown_name_error

Grid = Tuple[int, ...]
PathFn = Callable[..., torch.Tensor]

_SCANS: Dict[str, Tuple[PathFn, int]] = {}  # name -> (path function, grid length)


def check_grid(grid: Any, ndim: Optional[int] = None, name: str = "grid") -> Grid:
    """``grid`` as a tuple of positive ints of length ``ndim`` (2 or 3 when ``ndim`` is None)."""
    lengths = (ndim,) if ndim else (2, 3)
    want = " or ".join(("(H, W)", "(T, H, W)")[n - 2] for n in lengths)
    try:
        if isinstance(grid, (str, bytes)) or any(isinstance(n, bool) for n in grid):
            raise TypeError
        dims = tuple(operator.index(n) for n in grid)
    except TypeError:
        raise ValueError(f"{name} must be {want} with positive int sizes, got {grid!r}") from None
    if len(dims) not in lengths:
        raise ValueError(f"{name} must be {want} ({' or '.join(map(str, lengths))} sizes), "
                         f"got {len(dims)} sizes: {grid!r}")
    if min(dims) <= 0:
        raise ValueError(f"{name} sizes must be positive, got {grid!r}")
    return dims


def register_scan(name: str, ndim: int) -> Callable[[PathFn], PathFn]:
    """Decorator: register ``fn(grid, **kwargs) -> LongTensor[K, N]`` (CPU) as scan ``name`` for
    grids of ``ndim`` sizes."""

    def deco(fn: PathFn) -> PathFn:
        if name in _SCANS and _SCANS[name][0] is not fn:
            raise ValueError(f"scan {name!r} is already registered by {_SCANS[name][0].__name__}")
        _SCANS[name] = (fn, ndim)
        return fn

    return deco


def list_scans(pattern: str = "*") -> List[str]:
    """Names of the registered scans matching ``pattern``."""
    return match(_SCANS, pattern)


def scan_ndim(name: str) -> int:
    """How many sizes the grid of scan ``name`` has (2 or 3)."""
    if name not in _SCANS:
        raise unknown_name_error("scan", name, _SCANS)
    return _SCANS[name][1]


class Scan:
    """K orderings of the tokens of one grid on one device.

    Attributes:
        name, grid, kwargs: what built it (``kwargs`` with defaults filled in).
        paths: ``LongTensor[K, N]``, each row a permutation of ``range(N)``.
        inverse: ``LongTensor[K, N]``, ``paths[k][inverse[k]] == arange(N)``.
    """

    def __init__(self, name: str, grid: Grid, kwargs: Tuple[Tuple[str, Any], ...],
                 paths: torch.Tensor) -> None:
        self.name, self.grid, self._key = name, grid, kwargs
        self.kwargs = dict(kwargs)
        self.paths = paths  # [K, N]
        K, N = paths.shape
        self.inverse = torch.empty_like(paths).scatter_(
            1, paths, torch.arange(N, device=paths.device).expand(K, N))  # [K, N]
        self._flat_paths = paths.reshape(-1)  # [K*N]

    @property
    def num_paths(self) -> int:
        """K, the number of paths."""
        return self.paths.shape[0]

    @property
    def num_tokens(self) -> int:
        """N, the number of grid tokens."""
        return self.paths.shape[1]

    @property
    def device(self) -> torch.device:
        return self.paths.device

    def to(self, device: Union[str, torch.device]) -> "Scan":
        """The same scan with its index tensors on ``device`` (cached: same object every time)."""
        return _build(self.name, self.grid, self._key, str(torch.device(device)))

    def paths_on(self, device: Union[str, torch.device]) -> torch.Tensor:
        """``paths`` on ``device`` (cached)."""
        return self.to(device).paths

    def _check(self, arg: str, x: torch.Tensor, batch_multiple: int) -> None:
        N, K = self.num_tokens, self.num_paths
        if x.dim() != 3 or x.shape[1] != N or x.shape[0] % batch_multiple:
            lead = "B" if batch_multiple == 1 else f"B*{K}"
            raise ValueError(f"{arg} must have shape [{lead}, {N}, D] for scan {self.name!r} on grid "
                             f"{self.grid} (N={N} tokens, K={K} paths), got {tuple(x.shape)}")

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Order the tokens along every path: ``x[B, N, D] -> [B*K, N, D]`` (batch-major, path k of
        sample b at row ``b * K + k``)."""
        self._check("x", x, 1)
        y = x.index_select(1, self._flat_on(x.device))  # [B, K*N, D]
        return rearrange(y, "b (k n) d -> (b k) n d", k=self.num_paths)

    def merge(self, y: torch.Tensor, reduce: str = "mean",
              weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Put each path's outputs back in grid order and reduce over paths:
        ``y[B*K, N, D] -> [B, N, D]``.

        Args:
            y: per-path outputs, as :meth:`gather` lays them out.
            reduce: ``'mean'`` or ``'sum'`` over the K paths.
            weights: optional per-path factors ``[K]`` or ``[K, D]`` applied before reducing.
        """
        self._check("y", y, self.num_paths)
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        K, N = self.num_paths, self.num_tokens
        y = rearrange(y, "(b k) n d -> b k n d", k=K)
        if weights is not None:
            if weights.shape not in ((K,), (K, y.shape[-1])):
                raise ValueError(f"weights must have shape [{K}] or [{K}, {y.shape[-1]}], "
                                 f"got {tuple(weights.shape)}")
            w = weights.reshape(K, 1, -1).to(y.dtype)  # [K, 1, 1 or D]
            y = y * w
        out = y.new_zeros(y.shape[0], N, y.shape[-1])  # [B, N, D]
        out.index_add_(1, self._flat_on(y.device), rearrange(y, "b k n d -> b (k n) d"))
        return out / K if reduce == "mean" else out

    def _flat_on(self, device: torch.device) -> torch.Tensor:
        """``paths`` flattened to ``[K*N]`` on ``device`` (cached)."""
        return (self if device == self.device else self.to(device))._flat_paths

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"Scan({self.name!r}, grid={self.grid}{kw}, K={self.num_paths}, device={self.device})"


def _freeze(value: Any) -> Any:
    """Hashable form of a keyword value (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _bind(name: str, kwargs: Dict[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    """Keyword arguments of scan ``name`` with defaults filled in, sorted and hashable."""
    fn = _SCANS[name][0]
    params = inspect.signature(fn).parameters
    valid = [p for p in params if p != "grid"]
    bad = [k for k in kwargs if k not in valid]
    if bad:
        raise ValueError(f"scan {name!r} got unknown argument(s) {bad}; valid: {valid}")
    bound = {p: params[p].default for p in valid}
    bound.update(kwargs)
    return tuple(sorted((k, _freeze(v)) for k, v in bound.items()))


@functools.lru_cache(maxsize=512)
def _build(name: str, grid: Grid, kwargs: Tuple[Tuple[str, Any], ...], device: str) -> Scan:
    if device != "cpu":
        return Scan(name, grid, kwargs, _build(name, grid, kwargs, "cpu").paths.to(device))
    paths = _SCANS[name][0](grid, **dict(kwargs))
    N = math.prod(grid)
    if paths.dim() != 2 or paths.shape[1] != N or not torch.equal(
            paths.sort(dim=1).values, torch.arange(N).expand_as(paths)):
        raise RuntimeError(f"scan {name!r} produced paths of shape {tuple(paths.shape)} that are not "
                           f"permutations of the {N} tokens of grid {grid}")
    return Scan(name, grid, kwargs, paths.long().contiguous())


def create_scan(name: str, grid: Sequence[int], device: Union[str, torch.device] = "cpu",
                **kwargs: Any) -> Scan:
    """The scan ``name`` over ``grid`` (``(H, W)`` or ``(T, H, W)``), with its index tensors on
    ``device``.

    Results are cached on ``(name, grid, kwargs, device)``: the same call returns the same object
    (and the same tensors).  Scan parameters (window sizes, strides, ...) are keyword arguments.
    """
    if name not in _SCANS:
        raise unknown_name_error("scan", name, _SCANS)
    dims = check_grid(grid, _SCANS[name][1], name=f"grid for scan {name!r}")
    return _build(name, dims, _bind(name, kwargs), str(torch.device(device)))


def locality(path: torch.Tensor, grid: Sequence[int]) -> float:
    """Mean Euclidean grid distance between consecutive tokens of ``path`` (``[N]`` or ``[K, N]``,
    averaged over all paths); 1.0 means every step goes to a neighbouring cell."""
    dims = check_grid(grid)
    path = torch.as_tensor(path).long().cpu()
    path = path.reshape(-1, path.shape[-1])  # [K, N]
    N = math.prod(dims)
    if path.shape[-1] != N:
        raise ValueError(f"path must list the {N} tokens of grid {dims}, got shape {tuple(path.shape)}")
    if N < 2:
        return 0.0
    coords, rest = [], path
    for n in reversed(dims):  # unravel the row-major index, last axis first
        coords.append(rest % n)
        rest = torch.div(rest, n, rounding_mode="floor")
    xyz = torch.stack(coords, dim=-1).double()  # [K, N, ndim]
    return (xyz[:, 1:] - xyz[:, :-1]).norm(dim=-1).mean().item()
