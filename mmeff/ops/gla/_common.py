"""Input checks and the pre/post-processing every gated-linear-attention form shares.

Both op families (``simple_gla``: one log-decay per head, ``gla``: one per key channel) run on
the same *cores*: fp32, left-to-right functions
``core(q, k, v, g, scale, initial_state, output_final_state) -> (o, final_state)`` with ``g``
either None (no decay), ``[B, T, H, 1]`` (per head) or ``[B, T, H, K]`` (per key
channel), broadcast against the ``[K, V]`` state.  :func:`run_gla` does the rest once: the default
scale, fp32 accumulation for low-precision inputs, ``reverse`` by flipping the sequence, and the
output dtype.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from .._checks import check_float_same_device, check_qkv, check_shape

Core = Callable[..., Tuple[torch.Tensor, torch.Tensor]]


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                 initial_state: Optional[torch.Tensor], per_key: bool,
                 scale: Optional[float] = None) -> None:
    """Raise a ValueError naming the first argument whose type, shape, dtype, device or value is off.

    ``per_key`` selects the gate layout: ``[B, T, H, K]`` (gla) or ``[B, T, H]`` (simple_gla).
    """
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive number or None, got {scale!r}")
    B, T, H, K = check_qkv(q, k, v)
    if g is not None:
        check_shape("g", g, *(((B, T, H, K), "[B, T, H, K]") if per_key else ((B, T, H), "[B, T, H]")))
    if initial_state is not None:
        check_shape("initial_state", initial_state, (B, H, K, v.shape[-1]), "[B, H, K, V]")
    check_float_same_device((("q", q), ("k", k), ("v", v), ("g", g), ("initial_state", initial_state)))


def run_gla(core: Core, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
            scale: Optional[float], initial_state: Optional[torch.Tensor], output_final_state: bool,
            reverse: bool, **core_kwargs) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run ``core`` with the shared conventions; returns ``(o[B, T, H, V], final_state or None)``.

    ``g`` is None, ``[B, T, H, 1]`` or ``[B, T, H, K]`` here (simple_gla adds the trailing 1).
    """
    dtype = v.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = q.float(), k.float(), v.float()
    g = None if g is None else g.float()
    h0 = None if initial_state is None else initial_state.float()
    if reverse:  # the same op on the flipped sequence
        q, k, v = (t.flip(1) for t in (q, k, v))
        g = None if g is None else g.flip(1)
    o, ht = core(q, k, v, g, scale, h0, output_final_state, **core_kwargs)
    if reverse:
        o = o.flip(1)
    return o.to(dtype), (ht if output_final_state else None)
