"""``mmeff bench moe``: the MoE layer against a dense MLP of the same active parameters and against
the per-expert Python loop that MoE users complain about, same run, forward and forward+backward.

Configs: (a) 8 experts top-2 (Mixtral); (b) 64 fine-grained experts top-6 + 2 shared (DeepSeekMoE).
The dense baseline's hidden width equals the MoE's active hidden width per token.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
from timm.layers import Mlp
from torch import nn

from ..layers.moe import MoE
from . import BenchConfig, make_rows, measure_all, register_suite
from .harness import Measurement, Row


def loop_over_experts(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token-choice MoE with one Python iteration per expert (the common slow pattern)."""
    flat = x.reshape(-1, x.shape[-1])
    idx, gates = moe.select(moe.scores(moe.router_logits(flat)))
    out = moe.shared(flat) if moe.shared is not None else torch.zeros_like(flat)
    for e in range(moe.num_experts):
        rows, slot = (idx == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        h = moe._activate(flat[rows] @ moe.w1[e] + moe.b1[e]) @ moe.w2[e] + moe.b2[e]
        out = out.index_add(0, rows, (h * gates[rows, slot, None]).to(out.dtype))
    return out.reshape(x.shape)


CONFIGS = {
    "8e-top2": dict(num_experts=8, top_k=2, granularity=1, num_shared_experts=0),
    "64e-top6+2shared": dict(num_experts=64, top_k=6, granularity=8, num_shared_experts=2),
}


def _runner(fn: Callable, x: torch.Tensor, params, backward: bool, dtype) -> Callable[[], None]:
    ac = x.device.type == "cuda" and dtype != torch.float32

    def run():
        with torch.autocast(x.device.type, dtype=dtype, enabled=ac), torch.set_grad_enabled(backward):
            y = fn(x)
        if backward:
            y.float().sum().backward()
            for p in params:
                p.grad = None
    return run


@register_suite("moe")
def run(cfg: BenchConfig) -> List[Row]:
    dev, cuda = cfg.device, cfg.device.type == "cuda"
    dim = 1024 if cuda else 384
    tokens = cfg.tokens or ((16384 if cuda else 2048) if not cfg.quick else 256)
    modes = (False, True) if cfg.backward else (False,)
    x = torch.randn(tokens, dim, device=dev).requires_grad_(cfg.backward)
    rows: List[Row] = []
    for name, kw in CONFIGS.items():
        hidden = 4 * dim
        moe = MoE(dim, hidden, **kw, device=dev)
        active = (kw["top_k"] + kw["num_shared_experts"]) * (hidden // kw["granularity"])
        dense = Mlp(dim, active, device=dev)
        impls: Dict[str, nn.Module | Callable] = {
            "moe": moe, "dense": dense, "loop": lambda v, m=moe: loop_over_experts(m, v)}
        for bwd in modes:
            res: Dict[str, Measurement] = measure_all({
                impl: _runner(fn, x, list((moe if impl != "dense" else dense).parameters()) + [x], bwd,
                              cfg.dtype) for impl, fn in impls.items()}, dev, cfg.warmup, cfg.repeat)
            case = f"{name} N={tokens} D={dim} {'fwd+bwd' if bwd else 'fwd'}"
            rows += make_rows("moe", case, res, baselines=("dense", "loop"))
    return rows
