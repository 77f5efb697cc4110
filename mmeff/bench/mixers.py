"""``mmeff bench mixers``: the linear-time ops against their naive loops and causal SDPA.

For each op and each T (B*T held constant), forward and forward+backward of the dispatched fast
path, the naive fp32 loop (the spec) and ``F.scaled_dot_product_attention(is_causal=True)`` on the
same number of heads and head size.  Ratios are against both baselines, measured in the same run.
On CUDA the naive loop (one kernel launch per token, every state kept) is not run: its ratios come
from the CPU run.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from .. import ops
from . import BenchConfig, make_rows, measure_all, register_suite
from .harness import Measurement, Row

H_CPU, H_GPU, D = 4, 16, 64


def _inputs(op: str, B: int, T: int, H: int, dev, dtype) -> Tuple[tuple, dict]:
    """Positional and keyword arguments of ``op`` in its native layout (fla / mamba_ssm)."""
    r = lambda *s: torch.randn(*s, device=dev, dtype=dtype)  # noqa: E731
    if op in ("chunk_simple_gla", "chunk_gla", "chunk_delta_rule", "chunk_gated_delta_rule"):
        q, k, v = r(B, T, H, D), F.normalize(r(B, T, H, D), dim=-1), r(B, T, H, D)
        if op == "chunk_simple_gla":
            return (q, k, v, F.logsigmoid(r(B, T, H))), {}
        if op == "chunk_gla":
            return (q, k, v, F.logsigmoid(r(B, T, H, D)) / 16), {}
        beta = torch.sigmoid(r(B, T, H))
        if op == "chunk_delta_rule":
            return (q, k, v, beta), {}
        return (q, k, v, F.logsigmoid(r(B, T, H)), beta), {}
    if op == "mamba_chunk_scan_combined":
        n = 64
        x, dt = r(B, T, H, D), F.softplus(r(B, T, H) - 2)
        A = -torch.exp(r(H).float()).to(dtype)
        return (x, dt, A, r(B, T, 1, n), r(B, T, 1, n)), {"chunk_size": 64}
    if op == "selective_scan_fn":
        d, n = H * D, 16
        u, delta = r(B, d, T), F.softplus(r(B, d, T) - 2)
        A = -torch.exp(r(d, n).float()).to(dtype)
        return (u, delta, A, r(B, n, T), r(B, n, T)), {}
    raise ValueError(f"unknown op {op!r}")


OPS = ("chunk_simple_gla", "chunk_gla", "chunk_delta_rule", "chunk_gated_delta_rule",
       "mamba_chunk_scan_combined", "selective_scan_fn")


def _runner(fn: Callable, args: tuple, kw: dict, backward: bool) -> Callable[[], None]:
    floats = [a for a in args if torch.is_tensor(a) and a.is_floating_point()]
    if not backward:
        def run():
            with torch.no_grad():
                fn(*args, **kw)
        return run
    leaves = [a.detach().requires_grad_(True) for a in floats]
    it = iter(leaves)
    args = tuple(next(it) if (torch.is_tensor(a) and a.is_floating_point()) else a for a in args)

    def run():
        out = fn(*args, **kw)
        out = out[0] if isinstance(out, tuple) else out
        out.backward(torch.ones_like(out))
        for a in leaves:
            a.grad = None
    return run


def _sdpa(B: int, T: int, H: int, dev, dtype) -> Tuple[Callable, tuple, dict]:
    q, k, v = (torch.randn(B, H, T, D, device=dev, dtype=dtype) for _ in range(3))
    return F.scaled_dot_product_attention, (q, k, v), {"is_causal": True}


@register_suite("mixers")
def run(cfg: BenchConfig) -> List[Row]:
    dev, cuda = cfg.device, cfg.device.type == "cuda"
    H = H_GPU if cuda else H_CPU
    lengths = cfg.lengths or ((256, 512) if cfg.quick else (1024, 4096, 16384))
    tokens = cfg.tokens or (max(lengths) * (4 if cuda else 1))
    modes = (False, True) if cfg.backward else (False,)
    rows: List[Row] = []
    for op in OPS:
        impls = ops.implementations(op)
        fast = ops.dispatch(op, dev)
        for T in lengths:
            B = max(1, tokens // T)
            args, kw = _inputs(op, B, T, H, dev, cfg.dtype)
            for bwd in modes:
                fns = {ops.last_backend(op): _runner(fast, args, kw, bwd)}
                if not cuda:
                    fns["naive"] = _runner(impls["naive"], args, kw, bwd)
                sfn, sargs, skw = _sdpa(B, T, H, dev, cfg.dtype)
                fns["sdpa"] = _runner(sfn, sargs, skw, bwd)
                slow = {"warmup": 1, "repeat": min(3, cfg.repeat), "max_seconds": 20}
                res: Dict[str, Measurement] = measure_all(fns, dev, cfg.warmup, cfg.repeat, {"naive": slow})
                case = f"{op} T={T} B={B} H={H} {'fwd+bwd' if bwd else 'fwd'}"
                rows += make_rows("mixers", case, res, baselines=("naive", "sdpa"))
    return rows
