"""Input checks and the pre/post-processing every selective-scan form shares.

The forms differ only in their *core*: an fp32, left-to-right function
``core(x, dt, A, B, C, h0) -> (y, last_state)`` computing

    h_t = exp(dt_t * A) * h_{t-1} + x_t * B_t        (x_t = dt_t * u_t; state h[B, D, N])
    y_t = sum_n C_t[n] * h_t[n]

with ``x, dt: [B, D, L]``, ``A: [D, N]``, ``B, C: [B, G, N, L]`` (group ``g`` drives the channels
``g*D/G .. (g+1)*D/G - 1``) and ``h0: [B, D, N]`` or None.  :func:`run_selective_scan` does the
rest once, as mamba_ssm's ``selective_scan_fn`` does: ``delta_bias`` and ``delta_softplus``, fp32
for low-precision inputs, the skip ``D * u``, the gate ``silu(z)``, ``reverse`` by flipping the
sequence, and the output dtype (``u``'s).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from .._checks import check_float_same_device, check_shape, describe

Core = Callable[..., Tuple[torch.Tensor, torch.Tensor]]
Result = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    """Raise a ValueError naming the first argument whose type, shape, dtype or device is off."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a 3D tensor [B, D, L], got {describe(u)}")
    b, d, l = u.shape
    if l == 0:
        raise ValueError(f"u must hold at least one token (L >= 1), got shape {tuple(u.shape)}")
    check_shape("delta", delta, (b, d, l), "[B, D, L]")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must have shape [D, N] with D = {d}, got {describe(A)}")
    if A.is_complex():
        raise ValueError("A must be real (complex A is not supported), got a complex tensor")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = isinstance(t, torch.Tensor) and (
            (t.dim() == 3 and tuple(t.shape) == (b, n, l))
            or (t.dim() == 4 and t.shape[0] == b and tuple(t.shape[2:]) == (n, l)
                and t.shape[1] > 0 and d % t.shape[1] == 0))
        if not ok:
            raise ValueError(f"{name} must have shape [B, N, L] = {(b, n, l)} or [B, G, N, L] with "
                             f"G dividing D = {d}, got {describe(t)}")
    if D is not None:
        check_shape("D", D, (d,), "[D]")
    if z is not None:
        check_shape("z", z, (b, d, l), "[B, D, L]")
    if delta_bias is not None:
        check_shape("delta_bias", delta_bias, (d,), "[D]")
    if initial_state is not None:
        check_shape("initial_state", initial_state, (b, d, n), "[B, D, N]")
    named = (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
             ("delta_bias", delta_bias), ("initial_state", initial_state))
    check_float_same_device(named)


def run_selective_scan(core: Core, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                       B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor] = None,
                       z: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                       delta_softplus: bool = False, return_last_state: bool = False,
                       initial_state: Optional[torch.Tensor] = None, reverse: bool = False,
                       **core_kwargs) -> Result:
    """Run ``core`` with mamba_ssm's conventions; returns ``out`` or ``(out, last_state)``."""
    dtype = u.dtype
    u, dt, A = u.float(), delta.float(), A.float()
    B, C = (t.float() if t.dim() == 4 else t.float().unsqueeze(1) for t in (B, C))  # [B, G, N, L]
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    if reverse:  # the same op on the flipped sequence
        u, dt, B, C = (t.flip(-1) for t in (u, dt, B, C))
    h0 = None if initial_state is None else initial_state.float()
    y, last = core(dt * u, dt, A, B, C, h0, **core_kwargs)  # [B, D, L], [B, D, N]
    if D is not None:
        y = y + u * D.float()[:, None]
    if reverse:
        y = y.flip(-1)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, last) if return_last_state else y
