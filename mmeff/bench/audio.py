"""``mmeff bench audio``: streaming audio encoders on one CPU thread, against torchaudio's Emformer.

For each streaming model and chunk size (40 ms and 160 ms) a stream of audio is fed chunk by chunk
through ``model.step`` (the recurrent form) and every chunk is timed; the models take turns every
25 chunks, each with its own stream, so that a drift of the machine's speed hits all alike.  The
baseline, measured in the same run, is ``torchaudio.models.Emformer`` of about the same size (width and depth of the model,
4 heads, feed-forward 2x wide: ~1.8M parameters next to ~1.6M) fed the same features: the model's own
front end and conv subsampling, then ``Emformer.infer`` with its states, ``segment_length`` = the
chunk's tokens and 32 tokens (1.28 s) of left context, then the same norm and head.
``stream_mamba2_tiny compiled`` is the same model after :meth:`compile_step` (the whole step: front
end, conv subsampling, blocks, norm and head in one ``torch.compile`` graph; compiled during the
warm-up, once per chunk size; not in ``--quick``).

Rows (``ms`` column): per-chunk latency p50 and p99, and the compute time per second of audio
(= real-time factor x 1000).  Memory: the peak RSS growth while streaming 1 minute and 60 minutes
of audio (1 s chunks; a streaming model stays flat, and the case names the state's size after
each), and, for contrast, the offline forward of the first model over a 1-minute and a 10-minute
clip (its activations grow with the length).
The suite always runs on CPU with one thread (``register_suite(..., threads=1)``; restored afterwards).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

import mmeff

from . import BenchConfig, make_rows, register_suite
from .harness import Measurement, Row, peak_memory

MODELS = ("stream_mamba_tiny", "stream_mamba2_tiny", "stream_gdn_tiny")
CHUNKS_MS = (40, 160)
EMFORMER = "emformer"
COMPILED = "stream_mamba2_tiny"  # also run with ``compile_step()`` (the RTF target's model)
ROUND_CHUNKS = 25  # chunks each model streams in its turn (models interleave; caches stay warm in a turn)


class EmformerStream:
    """The Emformer baseline behind the same front end, conv subsampling, norm and head as ``model``."""

    def __init__(self, model: nn.Module, tokens_per_chunk: int, left_context: int = 32) -> None:
        from torchaudio.models import Emformer
        self.model = model
        self.emformer = Emformer(model.embed_dim, 4, 2 * model.embed_dim, len(model.blocks),
                                 segment_length=tokens_per_chunk, left_context_length=left_context).eval()
        self.tokens_per_chunk = tokens_per_chunk

    def init_state(self, batch: int) -> Dict:
        st = self.model.init_state(batch)
        return {"wave": st["wave"], "frames": st["frames"], "emformer": None}

    def step(self, chunk: torch.Tensor, state: Dict) -> Tuple[torch.Tensor, Dict]:
        m = self.model
        f, fe = m.frontend.step(chunk, {"wave": state["wave"]})
        t, frames = m.stem.step(f, state["frames"])
        lengths = torch.full((t.shape[0],), t.shape[1], dtype=torch.long)
        y, _, em = self.emformer.infer(m.stem_act(t), lengths, state["emformer"])
        return m.head(m.norm(y)), {"wave": fe["wave"], "frames": frames, "emformer": em}


def _streams(models: Dict[str, object], samples: int, chunk: int, round_chunks: int = 1 << 30
             ) -> Dict[str, Tuple[List[float], object]]:
    """Feed ``samples`` of noise through each model's ``step`` in chunks: per-chunk seconds and the
    final state of each.  The models take turns every ``round_chunks`` chunks (each keeps its own
    stream), so that a drift of the machine's speed hits all alike."""
    src = 0.1 * torch.randn(1, 16000 * 10, generator=torch.Generator().manual_seed(0))
    starts = [pos % (src.shape[1] - chunk + 1) for pos in range(0, samples - chunk + 1, chunk)]
    out = {name: ([], m.init_state(1)) for name, m in models.items()}
    with torch.inference_mode():
        for r0 in range(0, len(starts), round_chunks):
            for name, m in models.items():
                times, state = out[name]
                for start in starts[r0:r0 + round_chunks]:
                    x = src[:, start:start + chunk]
                    t0 = time.perf_counter()
                    _, state = m.step(x, state)
                    times.append(time.perf_counter() - t0)
                out[name] = (times, state)
    return out


def _state_kib(state) -> float:
    """Size of a streaming state (nested dicts / lists of tensors) in KiB."""
    if torch.is_tensor(state):
        return state.numel() * state.element_size() / 1024
    items = state.values() if isinstance(state, dict) else state or []
    return sum(_state_kib(v) for v in items)


def _stats(times: List[float]) -> Tuple[float, float, float]:
    """(p50 ms, p99 ms, ms of compute per second of stream time at ``len(times)`` chunks)."""
    ms = sorted(t * 1e3 for t in times)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))], sum(ms)


def _latency_rows(name_models: Dict[str, Callable[[int], object]], seconds: float) -> List[Row]:
    rows: List[Row] = []
    for chunk_ms in CHUNKS_MS:
        chunk = 16 * chunk_ms
        p50: Dict[str, Measurement] = {}
        p99: Dict[str, Measurement] = {}
        rtf: Dict[str, Measurement] = {}
        models = {name: make(chunk // 640) for name, make in name_models.items()}
        _streams(models, 20 * chunk, chunk)                              # warm-up
        for name, (times, _) in _streams(models, int(seconds * 16000), chunk, ROUND_CHUNKS).items():
            a, b, total = _stats(times)
            n = len(times)
            p50[name] = Measurement(a, min(times) * 1e3, 0, n)
            p99[name] = Measurement(b, min(times) * 1e3, 0, n)
            rtf[name] = Measurement(total / (n * chunk_ms / 1000), 0.0, 0, n)
        for what, res in (("latency p50 ms/chunk", p50), ("latency p99 ms/chunk", p99),
                          ("ms per 1 s of audio (RTF x 1000)", rtf)):
            rows += make_rows("audio", f"chunk {chunk_ms} ms, {what}", res, baselines=(EMFORMER,))
    return rows


def _memory_rows(name_models: Dict[str, Callable[[int], object]], minutes: Tuple[float, float]
                 ) -> List[Row]:
    rows: List[Row] = []
    chunk = 16000
    for name, make in name_models.items():
        model = make(chunk // 640)
        res: Dict[str, Measurement] = {}
        sizes = []
        for m in minutes:
            samples = int(m * 60 * 16000)
            out: List = []
            peak = peak_memory(lambda: out.append(_streams({name: model}, samples, chunk)[name]),
                               torch.device("cpu"))
            times, state = out[0]
            sizes.append(f"{_state_kib(state):.0f}")
            res[f"{m:g} min"] = Measurement(sum(times) * 1e3 / m, min(times) * 1e3, peak, len(times))
        rows += make_rows("audio", f"{name}: stream {minutes[0]:g} vs {minutes[1]:g} min (1 s chunks), "
                          f"ms per minute of audio and peak RSS growth; state {' / '.join(sizes)} KiB", res,
                          baselines=(f"{minutes[0]:g} min",))
    return rows


def _offline_rows(name: str, seconds: Tuple[float, float]) -> List[Row]:
    model = mmeff.create_model(name, num_classes=14).eval()
    res: Dict[str, Measurement] = {}
    for s in seconds:
        x = 0.1 * torch.randn(1, int(s * 16000))

        def run():
            with torch.inference_mode():
                model(x)
        t0 = time.perf_counter()
        run()
        ms = (time.perf_counter() - t0) * 1e3
        res[f"{s:g} s"] = Measurement(ms, ms, peak_memory(run, torch.device("cpu")), 1)
    return make_rows("audio", f"{name}: offline forward of {seconds[0]:g} s vs {seconds[1]:g} s, "
                     f"ms and peak RSS growth", res, baselines=(f"{seconds[0]:g} s",))


@register_suite("audio", threads=1)
def run(cfg: BenchConfig) -> List[Row]:
    names = MODELS[1:2] if cfg.quick else MODELS
    models = {n: mmeff.create_model(n, num_classes=14).eval() for n in names}
    makers: Dict[str, Callable[[int], object]] = {n: (lambda tokens, m=m: m) for n, m in models.items()}
    if not cfg.quick:  # the target model with its step compiled (compiles once per chunk size)
        target = mmeff.create_model(COMPILED, num_classes=14).eval()
        target.load_state_dict(models[COMPILED].state_dict())
        makers[f"{COMPILED} compiled"] = lambda tokens, m=target.compile_step(): m
    first = models[names[0]]
    makers[EMFORMER] = lambda tokens: EmformerStream(first, tokens)
    # offline first: its activations must be fresh allocations to show in the RSS
    rows = _offline_rows(names[0], (5.0, 50.0) if cfg.quick else (60.0, 600.0))
    rows += _latency_rows(makers, 3.0 if cfg.quick else 30.0)
    eager = {k: v for k, v in makers.items() if not k.endswith(" compiled")}
    rows += _memory_rows(eager, (0.1, 0.5) if cfg.quick else (1.0, 60.0))
    return rows
