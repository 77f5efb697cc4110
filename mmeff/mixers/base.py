"""The Mixer contract (DESIGN.md) and the mixer registry.

A mixer maps ``x[B, L, D] -> y[B, L, D]`` and owns no norm and no residual.  Causal mixers also
stream: ``init_state(batch, device, dtype)`` and ``step(x_chunk[B, l, D], state) -> (y, state)``,
where ``step`` over any split of a sequence equals ``forward`` on the whole.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import nn

from .._utils import match, unknown_name_error

_MIXERS: Dict[str, Type["Mixer"]] = {}


class Mixer(nn.Module):
    """Base class of every sequence mixer.

    Args:
        dim: model width D.
        causal: if True, position t sees only positions <= t, and ``step`` is available.
    """

    def __init__(self, dim: int, *, causal: bool = True) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise TypeError(f"{type(self).__name__} does not define forward()")

    def init_state(self, batch: int, device=None, dtype=None) -> Any:
        """A fresh streaming state for ``batch`` sequences."""
        self._require_causal("init_state")
        raise TypeError(f"{type(self).__name__} does not support streaming (no init_state)")

    def step(self, x: torch.Tensor, state: Any) -> Tuple[torch.Tensor, Any]:
        """Process the next chunk ``x[B, l, D]`` (l >= 1) given ``state``; return ``(y, new_state)``."""
        self._require_causal("step")
        raise TypeError(f"{type(self).__name__} does not support streaming (no step)")

    def _require_causal(self, what: str) -> None:
        if not self.causal:
            raise RuntimeError(
                f"{type(self).__name__}.{what}() needs a causal mixer; this one was built with "
                f"causal=False (bidirectional), which cannot stream")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects x of shape [B, L, {self.dim}], got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, causal={self.causal}"


def register_mixer(name: str) -> Callable[[Type[Mixer]], Type[Mixer]]:
    """Class decorator: make a Mixer subclass available to :func:`create_mixer` as ``name``."""

    def deco(cls: Type[Mixer]) -> Type[Mixer]:
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise ValueError(f"mixer {name!r} is already registered by {_MIXERS[name].__name__}")
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"register_mixer({name!r}) expects a Mixer subclass, got {cls!r}")
        cls.mixer_name = name
        _MIXERS[name] = cls
        return cls

    return deco


def create_mixer(name: str, dim: int, **kwargs: Any) -> Mixer:
    """Build the registered mixer ``name`` of width ``dim``.

    Unknown names and unknown keyword arguments are ValueErrors that list what is valid.
    """
    if name not in _MIXERS:
        raise unknown_name_error("mixer", name, _MIXERS)
    cls = _MIXERS[name]
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [p for p in params if p not in ("self", "dim")]
        bad = [k for k in kwargs if k not in valid]
        if bad:
            raise ValueError(f"mixer {name!r} got unknown argument(s) {bad}; valid: {valid}")
    return cls(dim, **kwargs)


def list_mixers(pattern: str = "*") -> List[str]:
    """Names of the registered mixers matching ``pattern``."""
    return match(_MIXERS, pattern)


def mixer_class(name: str) -> Type[Mixer]:
    """The class registered under ``name``."""
    if name not in _MIXERS:
        raise unknown_name_error("mixer", name, _MIXERS)
    return _MIXERS[name]


def resolve_mixer(mixer: "str | Callable[..., nn.Module] | None", dim: int,
                  mixer_kwargs: Optional[dict] = None, default: str = "attention", **extra: Any) -> nn.Module:
    """Build a mixer from a name, a factory callable or None (``default``), merging kwargs.

    ``extra`` holds the model's own defaults (e.g. ``causal=False``); ``mixer_kwargs`` wins over them.
    """
    kw = {**extra, **(mixer_kwargs or {})}
    if mixer is None:
        mixer = default
    if isinstance(mixer, str):
        cls = mixer_class(mixer)
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            # model-level defaults a mixer does not take are dropped; user kwargs are checked
            kw = {k: v for k, v in kw.items() if k in params or k in (mixer_kwargs or {})}
        return create_mixer(mixer, dim, **kw)
    return mixer(dim, **kw)
