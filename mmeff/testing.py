"""Test helpers for ops and models (used by mmeff's suite; handy for anyone adding a mixer).

``assert_close`` compares by the relative RMS error ratio ``rms(a - b) / rms(b)`` (as fla does)
and reports it, so a failure says how far off, not just "not close".
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence

import torch

AWKWARD_T = (1, 63, 75, 500)   # lengths that are not multiples of any chunk size
AWKWARD_D = (60, 100)          # head dims that are not powers of two


def err_ratio(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative RMS error of ``actual`` against ``expected`` (0 when both are all zeros)."""
    a, e = actual.detach().double(), expected.detach().double()
    num = (a - e).pow(2).mean().sqrt().item()
    den = e.pow(2).mean().sqrt().item()
    if den == 0.0:
        return num
    return num / den


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, ratio: float) -> float:
    """Assert shapes match, nothing is NaN/inf, and ``err_ratio <= ratio``; return the ratio."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise AssertionError(f"{name}: non-finite values in result")
    r = err_ratio(actual, expected)
    if not r <= ratio:
        diff = (actual.detach().double() - expected.detach().double()).abs().max().item()
        raise AssertionError(f"{name}: error ratio {r:.3e} > {ratio:.1e} (max abs diff {diff:.3e})")
    return r


def grads(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
          seed: int = 0) -> list:
    """Gradients of ``sum(out * random_weight)`` w.r.t. ``inputs`` (same weights for both sides)."""
    gen = torch.Generator().manual_seed(seed)
    loss = 0.0
    for o in outputs:
        w = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)
        loss = loss + (o * w).sum()
    return list(torch.autograd.grad(loss, list(inputs), allow_unused=True))


def assert_grads_close(name: str, actual: Sequence, expected: Sequence,
                       ratio: float, names: Optional[Iterable[str]] = None) -> Dict[str, float]:
    """``assert_close`` for each pair of gradients; ``None`` must match ``None``."""
    names = list(names) if names is not None else [f"grad{i}" for i in range(len(actual))]
    out = {}
    for n, a, e in zip(names, actual, expected):
        if a is None or e is None:
            if (a is None) != (e is None):
                raise AssertionError(f"{name}.{n}: one side has no gradient")
            continue
        out[n] = assert_close(f"{name}.{n}", a, e, ratio)
    return out


@contextlib.contextmanager
def nan_poisoned_empty() -> Iterator[None]:
    """Make ``torch.empty``/``empty_like`` return NaN-filled memory, to catch reads of uninitialised
    buffers (fla's trick)."""
    orig_empty, orig_like = torch.empty, torch.empty_like

    def empty(*a, **k):
        t = orig_empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def empty_like(*a, **k):
        t = orig_like(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty, torch.empty_like = empty, empty_like
    try:
        yield
    finally:
        torch.empty, torch.empty_like = orig_empty, orig_like


def random_splits(total: int, gen: torch.Generator, max_parts: int = 5) -> list:
    """Random positive chunk lengths that sum to ``total`` (for step-vs-forward checks)."""
    if total <= 1:
        return [total]
    n = int(torch.randint(1, min(max_parts, total) + 1, (1,), generator=gen))
    cuts = sorted(torch.randperm(total - 1, generator=gen)[: n - 1].add(1).tolist())
    edges = [0] + cuts + [total]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def run_in_chunks(step: Callable, x: torch.Tensor, state, splits: Sequence[int]):
    """Feed ``x[B, L, ...]`` through ``step(chunk, state)`` in pieces; return (concat y, state)."""
    ys, pos = [], 0
    for n in splits:
        y, state = step(x[:, pos:pos + n], state)
        ys.append(y)
        pos += n
    return torch.cat(ys, dim=1), state
