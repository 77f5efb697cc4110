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
from .._checks import check_float_same_device, check_qkv, check_shape

Core = Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]]


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
                 beta: torch.Tensor, initial_state: Optional[torch.Tensor]) -> None:
    """Raise a ValueError naming the first argument whose shape, dtype or device is off."""
    B, T, H, K = check_qkv(q, k, v)
    check_shape("beta", beta, (B, T, H), "[B, T, H]")
    if g is not None:
        check_shape("g", g, (B, T, H), "[B, T, H]")
    if initial_state is not None:
        check_shape("initial_state", initial_state, (B, H, K, v.shape[-1]), "[B, H, K, V]")
    check_float_same_device((("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta),
                             ("initial_state", initial_state)))


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
