"""HGRN2: a gated linear RNN whose state is expanded by an outer product.

HGRN2: Gated Linear RNNs with State Expansion (Qin et al. 2024), https://arxiv.org/abs/2404.07904.
HGRN's forget gate with a lower bound ``beta`` and its tied input gate ``1 - f``, with the
input gate turned into a key and the output gate into a query (the "linear attention view"):

    f_t = beta + (1 - beta) sigmoid(x_t W_f),   k_t = 1 - f_t,   q_t = swish(x_t W_q),   i_t = x_t W_i
    S_t = diag(f_t) S_{t-1} + k_t^T i_t,        o_t = q_t S_t,   y_t = RMSNorm(o_t) W_O

per head of ``expand_ratio`` channels (the state of a head is ``expand_ratio x expand_ratio``).
It runs on :func:`~mmeff.ops.chunk_gla` with ``g = log f``, computed as
``logaddexp(log beta, log(1 - beta) + logsigmoid(.))`` (exact, never ``log`` of a rounded ``f``),
and ``k = (1 - beta) sigmoid(-.)``.  The expansion adds no parameters: ``4 D^2`` projections (no
biases) and the output norm's ``D``, as fla's ``HGRN2Attention``.

In the HGRN models the lower bound grows with depth (learned and shared across layers, so that
upper layers keep long-term memory); here it is the per-layer constant ``lower_bound`` that the
model building the stack sets.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_divisible, check_positive
from ..layers import RmsNorm
from ._gated_scan import GatedScanMixer, gla_scan
from .base import register_mixer


@register_mixer("hgrn2")
class HGRN2(GatedScanMixer):
    """HGRN2 layer.

    Parameters: ``3 * D^2`` for the query/forget/input projections, ``D^2`` for the output
    projection and ``D`` for the output RMSNorm.

    Args:
        dim: model width D.
        causal: causal (and streaming) if True; bidirectional (forward + reverse scan, averaged)
            if False.
        expand_ratio: state expansion = channels per head (``dim / expand_ratio`` heads).
        lower_bound: beta in [0, 1), the forget gate's floor for this layer.
        norm_eps: epsilon of the output RMSNorm.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, expand_ratio: int = 64,
                 lower_bound: float = 0.0, norm_eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("expand_ratio", expand_ratio)
        check_divisible("dim", dim, "expand_ratio", expand_ratio)
        if not 0.0 <= lower_bound < 1.0:
            raise ValueError(f"lower_bound must be in [0, 1), got {lower_bound!r}")
        fk = dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim, self.lower_bound = dim // expand_ratio, expand_ratio, lower_bound
        self.state_shape = (self.num_heads, expand_ratio, expand_ratio)
        self.in_proj = nn.Linear(dim, 3 * dim, bias=False, **fk)  # q | f | i
        self.o_norm = RmsNorm(dim, eps=norm_eps, **fk)
        self.out_proj = nn.Linear(dim, dim, bias=False, **fk)

    def _gates(self, f: torch.Tensor):
        """Forget-gate logits -> (log f, k = 1 - f), in fp32."""
        f = f.float()
        beta = self.lower_bound
        log_beta = math.log(beta) if beta > 0 else float("-inf")
        g = torch.logaddexp(torch.full_like(f, log_beta), math.log1p(-beta) + F.logsigmoid(f))
        return g, (1.0 - beta) * torch.sigmoid(-f)

    def _mix(self, x: torch.Tensor, state: Optional[Dict[str, torch.Tensor]]):
        q, f, i = (rearrange(t, "b l (h d) -> b l h d", d=self.head_dim)
                   for t in self.in_proj(x).chunk(3, dim=-1))  # [B, L, H, d]
        g, k = self._gates(f)
        o, rec = gla_scan(F.silu(q), k, i, g, per_key=True, causal=self.causal,
                          state=None if state is None else state["recurrent"])
        y = self.out_proj(self.o_norm(rearrange(o, "b l h d -> b l (h d)")))
        return y, (None if state is None else {"recurrent": rec})

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, expand_ratio={self.head_dim}, "
                f"lower_bound={self.lower_bound}")
