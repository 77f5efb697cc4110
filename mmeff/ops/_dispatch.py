"""Op dispatch: one public name per op, several implementations, and a loud record of which ran.

Every op family registers its implementations (``naive``: the fp32 loop that is the spec;
``chunk``: the pure-PyTorch parallel form, the default everywhere; ``triton``: a CUDA kernel where
one pays).  :func:`dispatch` picks one for the inputs at hand and says once, through the ``mmeff``
logger at WARNING level, which path it took and why, so a missing fast path is never a silent
slow path.  ``MMEFF_OPS_BACKEND=naive|chunk|triton`` (or :func:`force_backend`) overrides the choice.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

logger = logging.getLogger("mmeff")

BACKENDS = ("triton", "chunk", "naive")
_IMPLS: Dict[str, Dict[str, Callable]] = {}
_ANNOUNCED: set = set()
_LAST: Dict[str, str] = {}
_FORCED: Optional[str] = None


def register_impl(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Register ``fn`` as the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def deco(fn: Callable) -> Callable:
        _IMPLS.setdefault(op, {})[backend] = fn
        return fn

    return deco


def _triton_ok(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _requested() -> Optional[str]:
    want = _FORCED or os.environ.get("MMEFF_OPS_BACKEND") or None
    if want is not None and want not in BACKENDS:
        raise ValueError(f"MMEFF_OPS_BACKEND must be one of {BACKENDS}, got {want!r}")
    return want


def choose(op: str, device: torch.device) -> Tuple[str, str]:
    """Return ``(backend, reason)`` for running ``op`` on ``device``."""
    impls = _IMPLS.get(op)
    if not impls:
        raise KeyError(f"op {op!r} has no registered implementation")
    want = _requested()
    if want is not None:
        if want not in impls:
            raise ValueError(f"{op}: backend {want!r} was requested but {op} has {sorted(impls)}")
        return want, "requested"
    if "triton" in impls and _triton_ok(device):
        return "triton", "CUDA + Triton available"
    if "triton" in impls:
        return "chunk", f"pure-PyTorch chunked form (no Triton kernel usable on {device.type})"
    return "chunk", "pure-PyTorch chunked form (the fast path of this op)"


def dispatch(op: str, device: torch.device) -> Callable:
    """The implementation of ``op`` for ``device``; announces the choice once per (op, device, path).

    Not while ``torch.compile`` traces (a log call there would split the graph): compiled code
    runs the same choice, announced by the first eager call.
    """
    backend, reason = choose(op, device)
    key = (op, device.type, backend)
    if key not in _ANNOUNCED and not torch.compiler.is_compiling():
        _ANNOUNCED.add(key)
        logger.warning("mmeff.ops.%s on %s: using %s path (%s)", op, device.type, backend, reason)
    _LAST[op] = backend
    return _IMPLS[op][backend]


def last_backend(op: str) -> Optional[str]:
    """Which backend the most recent call of ``op`` ran (None if it never ran)."""
    return _LAST.get(op)


def implementations(op: str) -> Dict[str, Callable]:
    """All registered implementations of ``op`` by backend name."""
    return dict(_IMPLS.get(op, {}))


@contextlib.contextmanager
def force_backend(backend: Optional[str]) -> Iterator[None]:
    """Run the enclosed code with every op forced to ``backend`` (None restores automatic choice)."""
    global _FORCED
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    old, _FORCED = _FORCED, backend
    try:
        yield
    finally:
        _FORCED = old
