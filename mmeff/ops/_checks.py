"""Argument checks shared by the op families: clear ValueErrors naming the argument, the expected
and the received value."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import torch


def describe(t) -> str:
    """A tensor's shape, or the type of a non-tensor, for error messages."""
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_shape(name: str, t, want: tuple, layout: str) -> None:
    """``t`` must be a tensor of exactly shape ``want`` (``layout`` names the axes, e.g. '[B, T, H]')."""
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {layout} = {tuple(want)}, got {describe(t)}")


def check_float_same_device(named: Iterable[Tuple[str, Optional[torch.Tensor]]]) -> None:
    """Every given tensor is floating point and on the device of the first one."""
    named = [(n, t) for n, t in named if t is not None]
    first_name, first = named[0]
    for name, t in named:
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} must be on {first.device} like {first_name}, got {t.device}")


def check_qkv(q, k, v) -> Tuple[int, int, int, int]:
    """fla's layout: ``q, k[B, T, H, K]`` and ``v[B, T, H, V]``; returns ``(B, T, H, K)``."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q must be a 4D tensor [B, T, H, K], got {describe(q)}")
    B, T, H, K = q.shape
    check_shape("k", k, (B, T, H, K), "[B, T, H, K]")
    if not isinstance(v, torch.Tensor) or v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must have shape [B, T, H, V] with [B, T, H] = {(B, T, H)}, got {describe(v)}")
    return B, T, H, K
