"""``mmeff bench <suite>``: benchmark suites, each measuring against a baseline in the same run.

A suite is a function ``(cfg: BenchConfig) -> list[Row]`` registered with :func:`register_suite`
in a module of this package; :data:`SUITE_MODULES` says which module defines which suite, so a
suite's imports are paid only when it runs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .harness import (Measurement, Row, format_table, make_rows, measure, measure_all, peak_memory,
                      write_json)

SUITE_MODULES = {"mixers": "mixers", "vision": "vision", "audio": "audio", "moe": "moe", "attention": "attention"}
_SUITES: Dict[str, Callable[["BenchConfig"], List[Row]]] = {}
_SUITE_THREADS: Dict[str, int] = {}  # suites that always run on this many CPU threads


@dataclass
class BenchConfig:
    """Options every suite understands.

    Attributes:
        device: where to run.
        dtype: input dtype (bf16 is the usual GPU choice).
        lengths: sequence lengths (suites that sweep T); None means the suite's defaults.
        tokens: B * T held constant across lengths (None: the suite's default for the device).
        backward: also time forward + backward.
        quick: smallest settings, for smoke tests.
        repeat, warmup: timing repeats (median reported) and untimed warm-up calls.
    """
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    lengths: Optional[Sequence[int]] = None
    tokens: Optional[int] = None
    backward: bool = True
    quick: bool = False
    repeat: int = 5
    warmup: int = 2


def register_suite(name: str, threads: Optional[int] = None) -> Callable:
    """Decorator: register a suite function under ``name``; ``threads``: it always runs on that
    many CPU threads (whatever ``--threads`` says), set and restored by :func:`run_suite`."""
    def deco(fn: Callable[[BenchConfig], List[Row]]) -> Callable[[BenchConfig], List[Row]]:
        _SUITES[name] = fn
        if threads is not None:
            _SUITE_THREADS[name] = threads
        return fn
    return deco


def suite_threads(name: str) -> int:
    """The CPU threads suite ``name`` runs on: its own fixed number, else torch's current one."""
    importlib.import_module(f"{__name__}.{SUITE_MODULES[name]}")
    return _SUITE_THREADS.get(name, torch.get_num_threads())


def list_suites(pattern: str = "*") -> List[str]:
    """Names of the benchmark suites matching ``pattern``."""
    from .._utils import match
    return match(SUITE_MODULES, pattern)


def run_suite(name: str, cfg: BenchConfig) -> List[Row]:
    """Run the suite ``name`` and return its rows."""
    if name not in SUITE_MODULES:
        from .._utils import unknown_name_error
        raise unknown_name_error("benchmark suite", name, SUITE_MODULES)
    importlib.import_module(f"{__name__}.{SUITE_MODULES[name]}")
    threads = torch.get_num_threads()
    torch.set_num_threads(suite_threads(name))
    try:
        return _SUITES[name](cfg)
    finally:
        torch.set_num_threads(threads)


__all__ = ["BenchConfig", "Measurement", "Row", "format_table", "list_suites", "make_rows", "measure",
           "measure_all", "peak_memory", "register_suite", "run_suite", "suite_threads", "write_json"]
