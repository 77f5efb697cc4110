"""Linear attention: softmax replaced by a positive feature map, computed as a linear RNN.

Transformers are RNNs (Katharopoulos et al. 2020), https://arxiv.org/abs/2006.16236: with a feature
map ``phi``, ``o_t = phi(q_t) S_t / (phi(q_t) . z_t)``, ``S_t = sum_{s<=t} phi(k_s)^T v_s``,
``z_t = sum_{s<=t} phi(k_s)``.  Runs on :func:`~mmeff.ops.chunk_simple_gla` with no decay; the
normaliser ``z`` rides along as an extra value column of ones, so one scan gives both.

Feature maps: ``'elu+1'`` (the paper's), ``'relu'``, and ``'dpfp'``, the deterministic
parameter-free projection of Schlag et al. 2021 (Linear Transformers Are Secretly Fast Weight
Programmers, https://arxiv.org/abs/2102.11174): ``r = relu([x, -x])``, ``phi(x) = [r * roll(r, i)
for i = 1..nu]``.  DPFP is the third map because it attacks linear attention's main weakness, the
small state (capacity), by widening the key features ``2 * nu`` times with no parameters (so the
layer keeps the paper's parameter count) while staying non-negative, which keeps the normaliser
positive (a signed map such as SiLU can drive ``phi(q) . z`` to zero).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_divisible, check_positive
from ._gated_scan import GatedScanMixer, gla_scan
from .base import register_mixer


def elu_p1(x: torch.Tensor) -> torch.Tensor:
    """``elu(x) + 1`` (Katharopoulos et al.): positive, linear for x > 0."""
    return F.elu(x) + 1.0


def dpfp(x: torch.Tensor, nu: int = 1) -> torch.Tensor:
    """Deterministic parameter-free projection: ``[..., d] -> [..., 2 * nu * d]``, non-negative."""
    r = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([r * r.roll(i, dims=-1) for i in range(1, nu + 1)], dim=-1)


FEATURE_MAPS: Dict[str, Tuple[Callable[[torch.Tensor, int], torch.Tensor], Callable[[int, int], int]]] = {
    # name -> (map(x, nu), feature width(head_dim, nu))
    "elu+1": (lambda x, nu: elu_p1(x), lambda d, nu: d),
    "relu": (lambda x, nu: F.relu(x), lambda d, nu: d),
    "dpfp": (dpfp, lambda d, nu: 2 * nu * d),
}


@register_mixer("linear_attention")
class LinearAttention(GatedScanMixer):
    """Multi-head linear attention (Katharopoulos et al. 2020).

    Parameters: the paper's attention layer, ``4 * (D^2 + D)`` (q/k/v and output projections with
    biases); the feature maps have none.

    Args:
        dim: model width D.
        causal: causal (and streaming) if True; bidirectional if False, as the mean of a forward
            and a reverse scan (numerators and normalisers averaged separately).
        num_heads: H; ``dim`` must divide by it.
        feature_map: ``'elu+1'``, ``'relu'`` or ``'dpfp'``.
        dpfp_nu: DPFP's number of rolls (feature width ``2 * nu * head_dim``).
        normalize: divide by ``phi(q) . z`` as in the paper; if False the output is
            ``phi(q) S * feature_dim ** -0.5`` (use with an output norm).
        eps: added to the normaliser.
        qkv_bias: biases on the projections.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 8,
                 feature_map: str = "elu+1", dpfp_nu: int = 1, normalize: bool = True,
                 eps: float = 1e-6, qkv_bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("num_heads", num_heads)
        check_divisible("dim", dim, "num_heads", num_heads)
        check_positive("dpfp_nu", dpfp_nu)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)}, got {feature_map!r}")
        fk = dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.feature_map, self.dpfp_nu, self.normalize, self.eps = feature_map, dpfp_nu, normalize, eps
        self.feature_dim = FEATURE_MAPS[feature_map][1](self.head_dim, dpfp_nu)
        # state [H, F, head_dim (+1: the normaliser z)]
        self.state_shape = (num_heads, self.feature_dim, self.head_dim + int(normalize))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **fk)
        self.proj = nn.Linear(dim, dim, bias=qkv_bias, **fk)

    def _mix(self, x: torch.Tensor, state: Optional[Dict[str, torch.Tensor]]):
        phi = FEATURE_MAPS[self.feature_map][0]
        q, k, v = (rearrange(t, "b l (h d) -> b l h d", h=self.num_heads)
                   for t in self.qkv(x).chunk(3, dim=-1))  # [B, L, H, d]
        q, k = phi(q, self.dpfp_nu), phi(k, self.dpfp_nu)  # [B, L, H, F]
        if self.normalize:  # a column of ones accumulates the normaliser z next to S
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        o, rec = gla_scan(q, k, v, None, per_key=False, causal=self.causal,
                          state=None if state is None else state["recurrent"],
                          scale=1.0 if self.normalize else None)
        if self.normalize:
            o = o[..., :-1] / (o[..., -1:] + self.eps)
        y = self.proj(rearrange(o, "b l h d -> b l (h d)"))
        return y, (None if state is None else {"recurrent": rec})

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, feature_map={self.feature_map!r}, "
                f"feature_dim={self.feature_dim}, normalize={self.normalize}")
