"""DeltaNet: linear attention whose state is written by the delta rule.

Parallelizing Linear Transformers with the Delta Rule over Sequence Length (Yang et al. 2024),
https://arxiv.org/abs/2406.06484; layer as in fla's ``DeltaNet``: q/k/v projections, short
convolutions with SiLU on q, k, v, L2-normalised q and k, ``beta = sigmoid(x W_b)``, the delta rule
per head, an output RMSNorm over each head (gated by ``silu(x W_g)`` if ``use_gate``) and an output
projection.  ``causal=False`` runs a forward and a reverse scan (the same op with ``reverse=True``)
and averages them, with a centred short convolution.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_positive
from ..layers import RmsNorm, ShortConv
from ..ops.delta_rule import (chunk_delta_rule, chunk_gated_delta_rule, fused_recurrent_delta_rule,
                              fused_recurrent_gated_delta_rule)
from .base import Mixer, register_mixer

RECURRENT_MAX_LEN = 16  # chunks up to this length run token by token (cheaper than chunking on CPU)


@register_mixer("deltanet")
class DeltaNet(Mixer):
    """DeltaNet layer.

    Parameters (no biases, as in the paper's layer; ``Kd = num_heads * head_dim``,
    ``Vd = expand_v * Kd``): ``D*(2*Kd + Vd)`` for q/k/v, ``D*H`` for beta, ``D*Vd`` for the gate if
    ``use_gate``, ``conv_size*(2*Kd + Vd)`` for the short convs, ``head_v_dim`` for the output norm
    and ``Vd*D`` for the output projection.

    Args:
        dim: model width D.
        causal: causal scan (and streaming) if True; bidirectional if False.
        num_heads: H.
        head_dim: query/key width per head; defaults to ``dim // num_heads``.
        expand_v: value width per head as a multiple of ``head_dim``.
        use_gate: gate the normalised output with ``silu(x W_g)``.
        conv_size: kernel size of the short convolutions.
        conv_bias: bias in the short convolutions.
        norm_eps: epsilon of the output RMSNorm.
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, num_heads: int = 4,
                 head_dim: Optional[int] = None, expand_v: float = 1.0, use_gate: bool = False,
                 conv_size: int = 4, conv_bias: bool = False, norm_eps: float = 1e-5,
                 device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        check_positive("num_heads", num_heads)
        head_dim = dim // num_heads if head_dim is None else head_dim
        check_positive("head_dim", head_dim)
        head_v_dim = int(head_dim * expand_v)
        if head_v_dim <= 0 or head_v_dim != head_dim * expand_v:
            raise ValueError(f"expand_v * head_dim must be a positive int, got {expand_v} * {head_dim}")
        fk = dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim, self.head_v_dim = num_heads, head_dim, head_v_dim
        key_dim, value_dim = num_heads * head_dim, num_heads * head_v_dim
        self.qkv_split = [key_dim, key_dim, value_dim]
        # one input projection, split into named parts (q|k|v, beta logits, gate, decay inputs)
        self.proj_split = {"qkv": 2 * key_dim + value_dim, "beta": num_heads}
        if use_gate:
            self.proj_split["gate"] = value_dim
        self.proj_split.update(self._extra_projections())
        self.in_proj = nn.Linear(dim, sum(self.proj_split.values()), bias=False, **fk)
        self.conv = ShortConv(2 * key_dim + value_dim, conv_size, causal=causal, activation="silu",
                              bias=conv_bias, **fk)
        self.o_norm = RmsNorm(head_v_dim, eps=norm_eps, **fk)
        self.out_proj = nn.Linear(value_dim, dim, bias=False, **fk)

    def _extra_projections(self) -> Dict[str, int]:
        """Further parts of the input projection a subclass needs (name -> width)."""
        return {}

    def _log_decay(self, parts: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """Per-head log-decay ``g[B, L, H]``; DeltaNet has none."""
        return None

    def _project(self, x: torch.Tensor, conv_state: Optional[torch.Tensor] = None):
        parts = dict(zip(self.proj_split, self.in_proj(x).split(list(self.proj_split.values()), -1)))
        if conv_state is None:
            qkv = self.conv(parts["qkv"])
        else:
            qkv, conv_state = self.conv.step(parts["qkv"], conv_state)
        q, k, v = (rearrange(t, "b l (h d) -> b l h d", h=self.num_heads)
                   for t in qkv.split(self.qkv_split, dim=-1))  # [B, L, H, dk|dv]
        beta = parts["beta"].float().sigmoid()  # [B, L, H]
        return q, k, v, self._log_decay(parts), beta, parts.get("gate"), conv_state

    def _scan(self, q, k, v, g, beta, state: Optional[torch.Tensor], reverse: bool = False):
        recurrent = q.shape[1] <= RECURRENT_MAX_LEN
        kw = dict(initial_state=state, output_final_state=state is not None, reverse=reverse,
                  use_qk_l2norm_in_kernel=True)
        if g is None:
            op = fused_recurrent_delta_rule if recurrent else chunk_delta_rule
            return op(q, k, v, beta, **kw)
        op = fused_recurrent_gated_delta_rule if recurrent else chunk_gated_delta_rule
        return op(q, k, v, g, beta, **kw)

    def _output(self, o: torch.Tensor, gate: Optional[torch.Tensor]) -> torch.Tensor:
        o = self.o_norm(o)  # [B, L, H, dv]
        if gate is not None:
            o = o * F.silu(rearrange(gate, "b l (h d) -> b l h d", h=self.num_heads))
        return self.out_proj(rearrange(o, "b l h d -> b l (h d)"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D]
        self._check_input(x)
        q, k, v, g, beta, gate, _ = self._project(x)
        o, _ = self._scan(q, k, v, g, beta, None)
        if not self.causal:
            o = 0.5 * (o + self._scan(q, k, v, g, beta, None, reverse=True)[0])
        return self._output(o, gate)

    def init_state(self, batch: int, device=None, dtype=None) -> Dict[str, torch.Tensor]:
        """Short-conv inputs ``[B, C, k-1]`` and the fp32 delta-rule state ``[B, H, dk, dv]``."""
        self._require_causal("init_state")
        device = device or self.in_proj.weight.device
        return {"conv": self.conv.init_state(batch, device=device, dtype=dtype),
                "recurrent": torch.zeros(batch, self.num_heads, self.head_dim, self.head_v_dim,
                                         device=device, dtype=torch.float32)}

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict]:
        self._require_causal("step")
        self._check_input(x)
        q, k, v, g, beta, gate, conv_state = self._project(x, state["conv"])
        o, rec = self._scan(q, k, v, g, beta, state["recurrent"])
        return self._output(o, gate), {"conv": conv_state, "recurrent": rec}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"head_v_dim={self.head_v_dim}")
