"""Chunked simple GLA: the chunked core of :mod:`mmeff.ops.gla.chunk` with one decay per head.

The per-head decay broadcasts over the key channels (its exponentials are ``[.., C, 1]``, so the
decay costs almost nothing next to the matmuls).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._dispatch import dispatch, register_impl
from ..gla._common import check_inputs, run_gla
from ..gla.chunk import CHUNK_SIZE, check_chunk_size, chunk_recurrence
from .naive import per_head_gate


@register_impl("chunk_simple_gla", "chunk")
def chunked_simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None,
                       scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                       output_final_state: bool = False, reverse: bool = False,
                       chunk_size: int = CHUNK_SIZE):
    """The chunked implementation behind ``chunk_simple_gla`` (``chunk_size`` exposed)."""
    check_chunk_size(chunk_size)
    return run_gla(chunk_recurrence, q, k, v, per_head_gate(g), scale, initial_state,
                   output_final_state, reverse, chunk_size=chunk_size)


def chunk_simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None,
                     scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                     output_final_state: bool = False, reverse: bool = False):
    """Linear attention with a scalar decay per head, chunked; drop-in for ``fla.ops.simple_gla``.

    ``S_t = exp(g_t) S_{t-1} + k_t^T v_t`` with state ``[K, V]``, ``o_t = (scale q_t) S_t``:
    RetNet (fixed ``g``), Lightning attention, Mamba-2's SSD (``g = dt * A``), and plain causal
    linear attention with ``g=None``.

    Args:
        q, k: ``[B, T, H, K]``.
        v: ``[B, T, H, V]``.
        g: ``[B, T, H]`` log-decays (<= 0), or None for no decay.
        scale: query scale; None means ``K ** -0.5``.
        initial_state: fp32 ``[B, H, K, V]`` state before the first token.
        output_final_state: also return the state after the last token.
        reverse: run right-to-left (the op on the flipped sequence, output flipped back).

    Returns:
        ``(o[B, T, H, V] in v's dtype, final_state[B, H, K, V] fp32 or None)``.
    """
    check_inputs(q, k, v, g, initial_state, per_key=False, scale=scale)
    return dispatch("chunk_simple_gla", q.device)(q, k, v, g, scale, initial_state, output_final_state,
                                                  reverse)
