"""``mmeff bench attention``: sparse attention ops against dense SDPA at the same shapes.

Per T: sliding window (1D, causal), block-sparse (local + global + strided, causal), MoBA (top-k
key blocks, causal) and 2D neighbourhood attention (non-causal, on a sqrt(T) x sqrt(T) grid), each
timed beside ``F.scaled_dot_product_attention`` (dense, same causality) in the same run, with peak
memory: the sparse ops' cost grows with the kept blocks, dense SDPA's with T^2 (on CPU) or T (flash).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..ops import sparse_attention as sa
from . import BenchConfig, make_rows, measure_all, register_suite
from .harness import Measurement, Row

D = 64


def _cases(T: int) -> Dict[str, Tuple[Callable, bool]]:
    """name -> (op(q, k, v) in [B, T, H, D] layout, causal)."""
    side, mb = math.isqrt(T), min(512, T // 8)
    return {
        "sliding_window(w=512)": (lambda q, k, v: sa.sliding_window_attention(q, k, v, 512, causal=True), True),
        "block_sparse(64, local 2, global 64, stride 16)": (
            lambda q, k, v: sa.block_sparse_attention(q, k, v, 64, num_local_blocks=2,
                                                      num_global_tokens=64, stride=16, causal=True), True),
        f"moba(block {mb}, top 4)": (lambda q, k, v: sa.moba_attention(q, k, v, mb, 4, causal=True), True),
        f"neighborhood({side}x{side}, k=13)": (
            lambda q, k, v: sa.neighborhood_attention(q, k, v, (side, side), 13), False),
    }


def _runner(fn: Callable, tensors, backward: bool) -> Callable[[], None]:
    def run():
        with torch.set_grad_enabled(backward):
            o = fn(*tensors)
        if backward:
            o.backward(torch.ones_like(o))
            for t in tensors:
                t.grad = None
    return run


@register_suite("attention")
def run(cfg: BenchConfig) -> List[Row]:
    dev, cuda = cfg.device, cfg.device.type == "cuda"
    H = 16 if cuda else 4
    lengths = cfg.lengths or ((1024,) if cfg.quick else ((4096, 16384, 65536) if cuda else (4096, 16384)))
    modes = (False, True) if cfg.backward else (False,)
    rows: List[Row] = []
    for T in lengths:
        if math.isqrt(T) ** 2 != T:
            raise ValueError(f"attention bench lengths must be perfect squares (2D grid), got {T}")
        q, k, v = (torch.randn(1, T, H, D, device=dev, dtype=cfg.dtype).requires_grad_(cfg.backward)
                   for _ in range(3))
        qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_(cfg.backward) for t in (q, k, v))
        for name, (fn, causal) in _cases(T).items():
            for bwd in modes:
                res: Dict[str, Measurement] = measure_all({
                    "sparse": _runner(fn, (q, k, v), bwd),
                    "dense_sdpa": _runner(
                        lambda a, b, c, cz=causal: F.scaled_dot_product_attention(a, b, c, is_causal=cz),
                        (qt, kt, vt), bwd)}, dev, cfg.warmup, cfg.repeat)
                case = f"{name} T={T} H={H} {'fwd+bwd' if bwd else 'fwd'}"
                rows += make_rows("attention", case, res, baselines=("dense_sdpa",))
    return rows
