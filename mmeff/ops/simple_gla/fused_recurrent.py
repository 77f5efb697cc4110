"""Recurrent simple GLA, token by token: :mod:`mmeff.ops.gla.fused_recurrent` with a per-head decay."""
from __future__ import annotations

from typing import Optional

import torch

from ..gla._common import check_inputs, run_gla
from ..gla.fused_recurrent import recurrence
from .naive import per_head_gate


def fused_recurrent_simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               g: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                               initial_state: Optional[torch.Tensor] = None,
                               output_final_state: bool = False, reverse: bool = False):
    """Simple GLA token by token; arguments and returns as :func:`~mmeff.ops.simple_gla.chunk_simple_gla`."""
    check_inputs(q, k, v, g, initial_state, per_key=False, scale=scale)
    return run_gla(recurrence, q, k, v, per_head_gate(g), scale, initial_state, output_final_state,
                   reverse)
