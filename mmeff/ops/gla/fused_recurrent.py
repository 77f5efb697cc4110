"""Recurrent gated linear attention, token by token: the form for decoding and short inputs.

The recurrence of :mod:`.naive` with every per-token input prepared in batch before the loop
(decays exponentiated once, heads folded into the batch); each step is one fused
``S <- diag(exp(g_t)) S + k_t^T v_t`` (``baddbmm``) and one ``bmm`` for the output.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from einops import rearrange

from ._common import check_inputs, run_gla


def recurrence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
               scale: float, initial_state: Optional[torch.Tensor],
               output_final_state: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token loop; ``g`` None, ``[B, T, H, 1]`` or ``[B, T, H, K]``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    # per-token views by unbind (autograd stacks their gradients once, no per-step scatter)
    qs = rearrange(q * scale, "b t h k -> t (b h) 1 k").unbind(0)
    ks = rearrange(k, "b t h k -> t (b h) k 1").unbind(0)
    vs = rearrange(v, "b t h v -> t (b h) 1 v").unbind(0)
    decays = [None] * T if g is None else rearrange(g.exp(), "b t h k -> t (b h) k 1").unbind(0)
    S = q.new_zeros(B * H, K, V) if initial_state is None else initial_state.reshape(B * H, K, V)
    o = []
    for q_t, k_t, v_t, decay_t in zip(qs, ks, vs, decays):  # decay_t: [BH, K or 1, 1]
        S = torch.baddbmm(S if decay_t is None else S * decay_t, k_t, v_t)
        o.append(torch.bmm(q_t, S))
    o = rearrange(torch.stack(o), "t (b h) 1 v -> b t h v", b=B)
    return o, S.reshape(B, H, K, V)


def fused_recurrent_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                        scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
                        output_final_state: bool = False, reverse: bool = False):
    """GLA token by token; arguments and returns as :func:`~mmeff.ops.gla.chunk_gla`."""
    check_inputs(q, k, v, g, initial_state, per_key=True, scale=scale)
    return run_gla(recurrence, q, k, v, g, scale, initial_state, output_final_state, reverse)
