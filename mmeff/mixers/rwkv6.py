"""RWKV-6 ("Finch") time mixing: data-dependent token shift and decay on a matrix-valued state.

Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence (Peng et al. 2024),
https://arxiv.org/abs/2404.05892, Sec. 5.  With ``x'`` the previous token:

    lora_s(z)     = lambda_s + tanh(z A_s) B_s
    ddlerp_s(x)   = x + (x' - x) * lora_s(x + (x' - x) * mu_x)          s in {w, k, v, r, g}
    r, k, v, g    = ddlerp_r(x) W_R, ddlerp_k(x) W_K, ddlerp_v(x) W_V, ddlerp_g(x) W_G
    w_t           = exp(-exp(d_t)),  d_t = lora_d(ddlerp_w(x))           (decay per channel)
    wkv_t         = diag(u) k_t^T v_t + sum_{i<t} diag(w_{i+1} ... w_{t-1}) k_i^T v_i
    y_t           = (SiLU(g_t) * GroupNorm_h(r_t wkv_t)) W_O

(Channel mixing is the block's feed-forward, not part of this mixer.)

The recurrence is GLA's with the decay applied *after* the read and the current token weighted
by the bonus ``u``.  It runs on :func:`~mmeff.ops.chunk_gla` unchanged: shifting ``k``, ``v`` and
``log w`` one step later (zeros at the start) makes GLA's state at ``t`` exactly RWKV's state
after ``t - 1``, so ``o_t = r_t S_t`` is the sum over ``i < t``; the bonus is the elementwise
``(r_t * u * k_t) . 1 v_t``, and the streaming state is completed with the last token
(``S <- diag(w_L) S + k_L^T v_L``).  The reverse scan of ``causal=False`` shifts the other way
and uses the op's ``reverse=True``; its token shift mixes in the mean of both neighbours so
neither direction is favoured.

Parameters: ``5 D^2`` (W_R, W_K, W_V, W_G, W_O) + ``6 D`` (mu_x and the five lambda_s) +
``2 * 5 * r_mix * D`` (the five ddlerp LoRAs) + ``D + 2 * r_decay * D`` (the decay LoRA) + ``D``
(u) + ``2 D`` (GroupNorm): ``5 D^2 + 458 D`` at the paper's ranks 32 and 64.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._utils import check_divisible, check_positive
from ._gated_scan import GatedScanMixer, gla_op
from .base import register_mixer


def _shift(t: torch.Tensor, reverse: bool) -> torch.Tensor:
    """``t[:, i] -> t[:, i - 1]`` (``i + 1`` if ``reverse``) along dim 1, zeros at the edge."""
    pad = [0, 0] * (t.dim() - 2)
    if reverse:
        return F.pad(t[:, 1:], pad + [0, 1])
    return F.pad(t[:, :-1], pad + [1, 0])


@register_mixer("rwkv6")
class RWKV6TimeMix(GatedScanMixer):
    """RWKV-6 time-mixing layer.

    Args:
        dim: model width D.
        causal: causal (and streaming) if True; bidirectional if False.
        head_size: channels per head (64 in RWKV-6); ``dim`` must divide by it.
        mix_rank: rank of the five token-shift LoRAs (32).
        decay_rank: rank of the decay LoRA (64).
        norm_eps: epsilon of the per-head GroupNorm (RWKV-6: ``1e-5 * 8^2``).
        device, dtype: factory arguments for the parameters.
    """

    def __init__(self, dim: int, *, causal: bool = True, head_size: int = 64, mix_rank: int = 32,
                 decay_rank: int = 64, norm_eps: float = 64e-5, device=None, dtype=None) -> None:
        super().__init__(dim, causal=causal)
        for name, value in (("head_size", head_size), ("mix_rank", mix_rank), ("decay_rank", decay_rank)):
            check_positive(name, value)
        check_divisible("dim", dim, "head_size", head_size)
        fk = dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim = dim // head_size, head_size
        self.state_shape = (self.num_heads, head_size, head_size)
        self.mix_rank = mix_rank
        self.mu_x = nn.Parameter(torch.empty(dim, **fk))
        self.mu = nn.Parameter(torch.empty(5, dim, **fk))  # lambda_s for s = w, k, v, r, g
        self.mix_a = nn.Parameter(torch.empty(dim, 5 * mix_rank, **fk))
        self.mix_b = nn.Parameter(torch.empty(5, mix_rank, dim, **fk))
        self.decay = nn.Parameter(torch.empty(dim, **fk))  # lambda_d
        self.decay_a = nn.Parameter(torch.empty(dim, decay_rank, **fk))
        self.decay_b = nn.Parameter(torch.empty(decay_rank, dim, **fk))
        self.bonus = nn.Parameter(torch.empty(self.num_heads, head_size, **fk))  # u
        self.receptance, self.key, self.value, self.gate, self.output = (
            nn.Linear(dim, dim, bias=False, **fk) for _ in range(5))
        self.ln_x = nn.GroupNorm(self.num_heads, dim, eps=norm_eps, **fk)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """RWKV-6's init at mid depth (its layer ratios 0.5): decays from ``exp(-e^-6)`` to
        ``exp(-e^-1)`` over the channels, token-shift mixes from 1 to 0, tiny LoRA factors."""
        D = self.dim
        ramp = torch.arange(D, dtype=torch.float32) / D  # 0 .. 1 over channels
        n = torch.arange(D, dtype=torch.float32) / max(D - 1, 1)
        self.mu_x.copy_(1 - ramp ** 0.5)
        self.mu.copy_(torch.stack([1 - ramp ** 0.5, 1 - ramp ** 0.5, 1 - (ramp ** 0.5 + 0.15),
                                   1 - ramp ** 0.25, 1 - ramp ** 0.25]))
        self.decay.copy_(-6 + 5 * n ** 1.35)
        self.bonus.copy_((0.5 * (1 - n) + ((torch.arange(D) + 1) % 3 - 1) * 0.1).view_as(self.bonus))
        nn.init.zeros_(self.mix_a)
        nn.init.uniform_(self.mix_b, -0.01, 0.01)
        nn.init.zeros_(self.decay_a)
        nn.init.uniform_(self.decay_b, -0.01, 0.01)
        nn.init.ones_(self.ln_x.weight)
        nn.init.zeros_(self.ln_x.bias)

    def _wkv(self, r, k, v, log_w, state: Optional[torch.Tensor], reverse: bool = False):
        """The state part of ``wkv`` (tokens before t) via GLA on shifted k, v, log w."""
        op = gla_op(True, r.shape[1])
        k_, v_, w_ = (_shift(t, reverse) for t in (k, v, log_w))
        return op(r, k_, v_, w_, scale=1.0, initial_state=state, output_final_state=state is not None,
                  reverse=reverse)

    def _mix(self, x: torch.Tensor, state: Optional[Dict[str, torch.Tensor]]):
        B, L, D = x.shape
        if state is not None:  # the previous token comes from the last chunk
            prev = torch.cat([state["shift"][:, None].to(x.dtype), x[:, :-1]], dim=1)
        elif self.causal:
            prev = _shift(x, False)
        else:
            prev = 0.5 * (_shift(x, False) + _shift(x, True))
        dx = prev - x  # [B, L, D]
        lora = torch.tanh((x + dx * self.mu_x) @ self.mix_a).view(B, L, 5, self.mix_rank)
        mix = torch.einsum("blsr,srd->blsd", lora, self.mix_b) + self.mu  # [B, L, 5, D]
        xw, xk, xv, xr, xg = (x[:, :, None] + dx[:, :, None] * mix).unbind(dim=2)
        d = self.decay + torch.tanh(xw @ self.decay_a) @ self.decay_b
        heads = lambda t: rearrange(t, "b l (h d) -> b l h d", h=self.num_heads)  # noqa: E731
        r, k, v = heads(self.receptance(xr)), heads(self.key(xk)), heads(self.value(xv))
        log_w = heads(-d.float().exp())  # [B, L, H, d] log-decays
        rec = None if state is None else state["recurrent"]
        o, S = self._wkv(r, k, v, log_w, rec)
        if not self.causal:
            o = 0.5 * (o + self._wkv(r, k, v, log_w, None, reverse=True)[0])
        bonus = (r.float() * self.bonus.float() * k.float()).sum(-1, keepdim=True) * v.float()
        o = self.ln_x(rearrange(o.float() + bonus, "b l h d -> (b l) (h d)").to(x.dtype))  # per token
        y = self.output(o.view(B, L, D) * F.silu(self.gate(xg)))
        if state is None:
            return y, None
        kv = k[:, -1, :, :, None].float() * v[:, -1, :, None, :].float()  # the last token enters
        S = log_w[:, -1, :, :, None].exp() * S + kv
        return y, {"recurrent": S, "shift": x[:, -1]}

    def _extra_state(self, batch: int, device, dtype) -> Dict[str, torch.Tensor]:
        return {"shift": torch.zeros(batch, self.dim, device=device, dtype=dtype)}  # previous token

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_heads={self.num_heads}, head_size={self.head_dim}"
