"""Input checks and the pre/post-processing every SSD (Mamba-2 scan) form shares.

The forms differ only in their *core*: an fp32, left-to-right function
``core(x, dt, A, B, C, h0, chunk_size) -> (y, final_state)`` computing, per head,

    h_t = exp(dt_t * A) * h_{t-1} + (dt_t * x_t) B_t^T     (state h[B, H, P, N])
    y_t = h_t C_t

with ``x: [B, L, H, P]``, ``dt: [B, L, H]``, ``A: [H]``, ``B, C: [B, L, G, N]`` (group ``g`` drives
the heads ``g*H/G .. (g+1)*H/G - 1``) and ``h0: [B, H, P, N]`` or None.
:func:`run_ssd` does the rest once, as mamba_ssm's ``mamba_chunk_scan_combined`` does: ``dt_bias``
and ``dt_softplus``, fp32 for low-precision inputs, the skip ``D * x``, the gate ``silu(z)``,
``reverse`` by flipping the sequence, and the output dtype (``x``'s).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from .._checks import check_float_same_device, check_shape, describe

Core = Callable[..., Tuple[torch.Tensor, torch.Tensor]]
Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def check_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states) -> None:
    """Raise a ValueError naming the first argument whose type, shape, dtype or device is off."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a 4D tensor [B, L, H, P], got {describe(x)}")
    b, l, h, p = x.shape
    if l == 0:
        raise ValueError(f"x must hold at least one token (L >= 1), got shape {tuple(x.shape)}")
    check_shape("dt", dt, (b, l, h), "[B, L, H]")
    check_shape("A", A, (h,), "[H]")
    if not isinstance(B, torch.Tensor) or B.dim() != 4 or tuple(B.shape[:2]) != (b, l) \
            or B.shape[2] == 0 or h % B.shape[2]:
        raise ValueError(f"B must have shape [B, L, G, N] with (B, L) = {(b, l)} and G dividing "
                         f"H = {h}, got {describe(B)}")
    check_shape("C", C, tuple(B.shape), "[B, L, G, N] like B")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if D is not None and (not isinstance(D, torch.Tensor) or tuple(D.shape) not in ((h,), (h, p))):
        raise ValueError(f"D must have shape [H] = {(h,)} or [H, P] = {(h, p)}, got {describe(D)}")
    if z is not None:
        check_shape("z", z, (b, l, h, p), "[B, L, H, P]")
    if dt_bias is not None:
        check_shape("dt_bias", dt_bias, (h,), "[H]")
    if initial_states is not None:
        check_shape("initial_states", initial_states, (b, h, p, B.shape[3]), "[B, H, P, N]")
    named = (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
             ("dt_bias", dt_bias), ("initial_states", initial_states))
    check_float_same_device(named)


def run_ssd(core: Core, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
            C: torch.Tensor, chunk_size: int, D: Optional[torch.Tensor] = None,
            z: Optional[torch.Tensor] = None, dt_bias: Optional[torch.Tensor] = None,
            initial_states: Optional[torch.Tensor] = None, dt_softplus: bool = False,
            return_final_states: bool = False, reverse: bool = False) -> Result:
    """Run ``core`` with mamba_ssm's conventions; returns ``y`` or ``(y, final_states)``."""
    dtype = x.dtype
    x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if reverse:  # the same op on the flipped sequence
        x, dt, B, C = (t.flip(1) for t in (x, dt, B, C))
    h0 = None if initial_states is None else initial_states.float()
    y, last = core(x, dt, A, B, C, h0, chunk_size)  # [B, L, H, P], [B, H, P, N]
    if D is not None:
        y = y + x * (D.float()[:, None] if D.dim() == 1 else D.float())
    if reverse:
        y = y.flip(1)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, last) if return_final_states else y
