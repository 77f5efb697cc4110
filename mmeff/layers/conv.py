"""Short depthwise convolution over time (Mamba, DeltaNet, GLA "short conv"), with streaming state."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class ShortConv(nn.Module):
    """Depthwise 1D convolution over ``x[B, L, C]`` with an optional activation.

    ``causal=True`` pads on the left only (output t sees inputs t-k+1..t) and can stream:
    ``init_state`` holds the last ``kernel_size - 1`` inputs and ``step`` continues from it, so
    ``step`` over any split equals ``forward``.  ``causal=False`` pads symmetrically (odd kernels
    stay centred; an even kernel leans one step to the past).

    Args:
        channels: C.
        kernel_size: k (Mamba uses 4).
        activation: None or 'silu'.
        bias: conv bias.
    """

    def __init__(self, channels: int, kernel_size: int = 4, *, causal: bool = True,
                 activation: Optional[str] = "silu", bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if activation not in (None, "silu"):
            raise ValueError(f"activation must be None or 'silu', got {activation!r}")
        self.channels, self.kernel_size, self.causal = channels, kernel_size, causal
        self.activation = activation
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias,
                              device=device, dtype=dtype)

    def _act(self, y: torch.Tensor) -> torch.Tensor:
        return F.silu(y) if self.activation == "silu" else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, C]
        x = rearrange(x, "b l c -> b c l")
        k = self.kernel_size - 1
        pad = (k, 0) if self.causal else (k - k // 2, k // 2)
        y = self.conv(F.pad(x, pad))
        return self._act(rearrange(y, "b c l -> b l c"))

    def init_state(self, batch: int, device=None, dtype=None) -> torch.Tensor:
        """Zeros ``[B, C, k-1]``: the inputs before the start of the stream."""
        if not self.causal:
            raise RuntimeError("ShortConv.init_state() needs causal=True")
        dtype = dtype or self.conv.weight.dtype
        return torch.zeros(batch, self.channels, self.kernel_size - 1, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Continue the stream with ``x[B, l, C]``; returns ``(y[B, l, C], new_state)``."""
        if not self.causal:
            raise RuntimeError("ShortConv.step() needs causal=True")
        xt = torch.cat([state.to(x.dtype), rearrange(x, "b l c -> b c l")], dim=-1)  # [B, C, k-1+l]
        # windows of k inputs times the kernel: one small batched op (conv1d's set-up dominates
        # at the few tokens of a streaming step)
        w = self.conv.weight[:, 0]  # [C, k]
        y = torch.einsum("bcwk,ck->bwc", xt.unfold(-1, self.kernel_size, 1), w)
        if self.conv.bias is not None:
            y = y + self.conv.bias
        new_state = xt[..., xt.shape[-1] - (self.kernel_size - 1):]
        return self._act(y), new_state
