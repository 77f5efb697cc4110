"""Reference simple GLA: the loop of :mod:`mmeff.ops.gla.naive` with one decay per head.

``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = (scale q_t) S_t`` with ``g_t`` a scalar per head
(RetNet, Lightning attention, Mamba-2's SSD, plain linear attention when ``g`` is None).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._dispatch import register_impl
from ..gla._common import run_gla
from ..gla.naive import naive_recurrence


def per_head_gate(g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``[B, T, H] -> [B, T, H, 1]``: the per-head gate broadcast over the key channels."""
    return None if g is None else g.unsqueeze(-1)


@register_impl("chunk_simple_gla", "naive")
def naive_simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None,
                     scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                     output_final_state: bool = False, reverse: bool = False):
    """Simple GLA by a loop over tokens; same arguments and returns as ``chunk_simple_gla``."""
    return run_gla(naive_recurrence, q, k, v, per_head_gate(g), scale, initial_state,
                   output_final_state, reverse)
