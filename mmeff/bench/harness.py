"""Benchmark harness: warm-up, median of interleaved repeats, peak memory, ratios against a same-run
baseline.

Time: CUDA events on GPU (synchronised), ``perf_counter`` on CPU.  Peak memory: CUDA
``max_memory_allocated`` above the memory held before the call; on CPU the peak resident set size
above the RSS before the call, sampled by a background thread (Linux ``/proc/self/statm``).
Every case of a suite is measured with its baselines in the same process, their runs interleaved
(:func:`measure_all`), and reported as ratios.
"""
from __future__ import annotations

import gc
import itertools
import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _RssPeak:
    """Context manager sampling RSS every ``interval`` seconds; ``.peak`` is the growth in bytes."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> "_RssPeak":
        gc.collect()
        self.base = self._max = _rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self._max, _rss()) - self.base


@dataclass
class Measurement:
    """One timed case: median / min milliseconds over ``repeat`` runs and peak memory in bytes."""
    ms: float
    ms_min: float
    peak_bytes: int
    repeat: int


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeat: int = 5,
            max_seconds: Optional[float] = None) -> Measurement:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then the median of ``repeat`` calls.

    ``max_seconds`` cuts the repeats short for slow cases (at least one timed call always runs).
    """
    return measure_all({"fn": fn}, device, warmup, repeat, {"fn": {"max_seconds": max_seconds}})["fn"]


def measure_all(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int = 2,
                repeat: int = 5, overrides: Optional[Dict[str, Dict[str, object]]] = None
                ) -> Dict[str, Measurement]:
    """Time the implementations ``fns`` of one case, interleaved: each is warmed up, then every
    round calls each once, so a drift of the machine's speed (frequent on shared CPUs) shifts all
    of them alike and their ratios hold.  The order rotates round by round, so that no
    implementation always runs right after the same one (a call that leaves the caches and the
    allocator in a poor state would otherwise always tax the same successor: measured ~4% on the
    MoE forward when it always followed the per-expert loop).  Medians per implementation, then
    each one's peak memory.

    ``overrides[name]`` may set that implementation's own ``warmup``, ``repeat`` and
    ``max_seconds`` (its repeats stop once its timed calls took that long; at least one runs).
    """
    device = torch.device(device)
    opts = {n: {"warmup": warmup, "repeat": repeat, "max_seconds": None, **(overrides or {}).get(n, {})}
            for n in fns}
    for name, fn in fns.items():
        for _ in range(opts[name]["warmup"]):
            fn()
    times: Dict[str, List[float]] = {n: [] for n in fns}

    def wanted(n: str) -> bool:
        o, t = opts[n], times[n]
        return len(t) < o["repeat"] and not (t and o["max_seconds"] is not None
                                             and sum(t) / 1e3 > o["max_seconds"])

    for rnd in itertools.count():
        names = [n for n in fns if wanted(n)]
        if not names:
            break
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_time_once(fns[name], device))
    return {n: Measurement(statistics.median(times[n]), min(times[n]), peak_memory(fns[n], device),
                           len(times[n])) for n in fns}


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call (CUDA events around it on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize(device)
        return s.elapsed_time(e)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Extra memory (bytes) ``fn()`` needs at its peak, above what was held before the call."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _RssPeak() as p:
        fn()
    return p.peak


# below this, a CPU peak (RSS growth) is allocator noise: memory ratios are not reported
MIN_RELIABLE_BYTES = 2**20


@dataclass
class Row:
    """A result row. ``speedup[b]`` = time of baseline ``b`` / this time (> 1: faster than ``b``);
    ``mem[b]`` = this peak / the peak of ``b``."""
    suite: str
    case: str
    impl: str
    ms: float
    peak_mib: float
    speedup: Dict[str, float] = field(default_factory=dict)
    mem: Dict[str, float] = field(default_factory=dict)


def make_rows(suite: str, case: str, results: Dict[str, Measurement],
              baselines: Iterable[str]) -> List[Row]:
    """Rows for one case; each implementation is compared with every measured baseline."""
    baselines = [b for b in baselines if b in results]
    if not baselines:
        raise ValueError(f"none of the baselines was measured; measured {sorted(results)}")
    rows = []
    for impl, m in results.items():
        sp = {b: results[b].ms / m.ms for b in baselines if b != impl and m.ms > 0}
        mem = {b: m.peak_bytes / results[b].peak_bytes for b in baselines
               if b != impl and min(m.peak_bytes, results[b].peak_bytes) >= MIN_RELIABLE_BYTES}
        rows.append(Row(suite, case, impl, m.ms, m.peak_bytes / 2**20, sp, mem))
    return rows


def format_table(rows: Iterable[Row]) -> str:
    """A fixed-width text table of ``rows`` (speed and memory as ratios against the baselines)."""
    head = ["case", "impl", "ms", "peak MiB", "speed-up", "memory"]
    body = []
    for r in rows:
        sp = ", ".join(f"{v:.2f}x vs {b}" for b, v in r.speedup.items()) or "baseline"
        mem = ", ".join(f"{v:.2f}x {b}" for b, v in r.mem.items())
        body.append([r.case, r.impl, f"{r.ms:.2f}", f"{r.peak_mib:.1f}", sp, mem])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def environment(device: torch.device, threads: Optional[int] = None) -> Dict[str, object]:
    """What the numbers were measured on (``threads``: the CPU threads, default torch's now)."""
    device = torch.device(device)
    env = {"torch": torch.__version__, "device": str(device),
           "threads": threads or torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        import platform
        env["cpu"] = platform.processor() or platform.machine()
    return env


def write_json(path: str, suite: str, rows: Iterable[Row], device: torch.device,
               threads: Optional[int] = None) -> None:
    """Write ``{"suite", "environment", "rows"}`` to ``path``."""
    with open(path, "w") as f:
        json.dump({"suite": suite, "environment": environment(device, threads),
                   "rows": [asdict(r) for r in rows]}, f, indent=1)
