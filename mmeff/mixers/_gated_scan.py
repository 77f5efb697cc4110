"""The scan shared by the gated-linear-attention mixers (linear attention, RetNet, GLA, HGRN2, RWKV-6).

:func:`gla_scan` runs the simple-GLA (per-head decay) or GLA (per-channel decay) op causally,
continuing a streaming state, or bidirectionally as the mean of a left-to-right and a right-to-left
pass of the same op.  Short inputs (decoding, small streaming chunks) go token by token, longer
ones through the chunked form.  :class:`GatedScanMixer` gives them one ``forward`` / ``init_state``
/ ``step``.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from ..ops.gla import chunk_gla, fused_recurrent_gla
from ..ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
from .base import Mixer

RECURRENT_MAX_LEN = 4  # measured on CPU: up to ~6 tokens the token loop beats the chunked setup


def gla_op(per_key: bool, length: int) -> Callable:
    """The op for a per-channel (``per_key``) or per-head gate and a sequence of ``length`` tokens."""
    if per_key:
        return fused_recurrent_gla if length <= RECURRENT_MAX_LEN else chunk_gla
    return fused_recurrent_simple_gla if length <= RECURRENT_MAX_LEN else chunk_simple_gla


def gla_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], *,
             per_key: bool, causal: bool, state: Optional[torch.Tensor] = None,
             scale: Optional[float] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(o[B, L, H, V], new_state)``; q, k ``[B, L, H, K]``, g ``[B, L, H(, K)]`` or None.

    Causal: one left-to-right pass from ``state`` (the new state is returned when ``state`` is
    given).  ``causal=False``: the mean of both directions, no state.
    """
    op = gla_op(per_key, q.shape[1])
    if causal:
        return op(q, k, v, g, scale=scale, initial_state=state, output_final_state=state is not None)
    o = op(q, k, v, g, scale=scale)[0] + op(q, k, v, g, scale=scale, reverse=True)[0]
    return 0.5 * o, None


def zero_state(batch: int, heads: int, k_dim: int, v_dim: int, device=None) -> torch.Tensor:
    """A fresh fp32 recurrent state ``[B, H, K, V]``."""
    return torch.zeros(batch, heads, k_dim, v_dim, device=device, dtype=torch.float32)


class GatedScanMixer(Mixer):
    """Base of these mixers: ``forward``, ``init_state`` and ``step`` around one ``_mix``.

    A subclass sets ``state_shape = (H, K, V)`` (its recurrent state per sequence) and defines
    ``_mix(x, state) -> (y, new_state)``, which gets ``state=None`` from ``forward`` (and returns
    no state) and the streaming state dict from ``step``.  Extra streaming state (positions, the
    previous token) comes from ``_extra_state``.
    """

    state_shape: Tuple[int, int, int]

    def _mix(self, x: torch.Tensor, state: Optional[Dict[str, torch.Tensor]]):
        raise TypeError(f"{type(self).__name__} does not define _mix()")

    def _extra_state(self, batch: int, device, dtype) -> Dict[str, torch.Tensor]:
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        self._check_input(x)
        return self._mix(x, None)[0]

    def init_state(self, batch: int, device=None, dtype=None) -> Dict[str, torch.Tensor]:
        """``{"recurrent": fp32 [B, H, K, V], ...}`` for a fresh stream."""
        self._require_causal("init_state")
        ref = next(self.parameters())
        device, dtype = device or ref.device, dtype or ref.dtype
        return {"recurrent": zero_state(batch, *self.state_shape, device),
                **self._extra_state(batch, device, dtype)}

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor]):
        self._require_causal("step")
        self._check_input(x)
        return self._mix(x, state)
