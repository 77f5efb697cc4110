"""Input checks and the pre/post-processing every delta-rule form shares.

Each form (naive, chunk, fused_recurrent) only supplies a *core*: an fp32, left-to-right function
``core(q, k, v, g, beta, initial_state, output_final_state) -> (o, final_state)`` with ``q`` already
scaled.  :func:`run_delta_rule` does the rest once: optional L2 norm of q and k, the default scale,
fp32 accumulation for low-precision inputs, ``reverse`` by flipping the sequence, and the output
dtype.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

Core = Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]]


def _shape(name: str, t: torch.Tensor, want: tuple, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of shape {what}, got {type(t).__name__}")
    if tuple(t.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {what} = {tuple(want)}, got {tuple(t.shape)}")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                 beta: torch.Tensor, initial_state: Optional[torch.Tensor]) -> None:
    """Raise a ValueError naming the first argument whose shape, dtype or device is off."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"q must be a 4D tensor [B, T, H, K], got {got}")
    B, T, H, K = q.shape
    _shape("k", k, (B, T, H, K), "[B, T, H, K]")
    if not isinstance(v, torch.Tensor) or v.dim() != 4 or tuple(v.shape[:3]) != (B, T, H):
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"v must have shape [B, T, H, V] with [B, T, H] = {(B, T, H)}, got {got}")
    _shape("beta", beta, (B, T, H), "[B, T, H]")
    if g is not None:
        _shape("g", g, (B, T, H), "[B, T, H]")
    if initial_state is not None:
        _shape("initial_state", initial_state, (B, H, K, v.shape[-1]), "[B, H, K, V]")
    for name, t in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta),
                    ("initial_state", initial_state)):
        if t is None:
            continue
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on {q.device} like q, got {t.device}")


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(sum(x^2) + eps)`` over the last dim (fla's ``use_qk_l2norm_in_kernel``)."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


def run_delta_rule(core: Core, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   g: Optional[torch.Tensor], beta: torch.Tensor, scale: Optional[float],
                   initial_state: Optional[torch.Tensor], output_final_state: bool, reverse: bool,
                   use_qk_l2norm_in_kernel: bool, **core_kwargs) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run ``core`` with the shared conventions; returns ``(o[B, T, H, V], final_state or None)``."""
    dtype = v.dtype
    ct = torch.promote_types(dtype, torch.float32)  # compute dtype: fp32 for bf16/fp16 inputs
    q, k, v, beta = q.to(ct), k.to(ct), v.to(ct), beta.to(ct)
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    g = None if g is None else g.to(ct)
    h0 = None if initial_state is None else initial_state.to(ct)
    if reverse:  # the same op on the flipped sequence
        q, k, v, beta = (t.flip(1) for t in (q, k, v, beta))
        g = None if g is None else g.flip(1)
    o, ht = core(q, k, v, g, beta, h0, output_final_state, **core_kwargs)
    if reverse:
        o = o.flip(1)
    return o.to(dtype), (ht if output_final_state else None)
