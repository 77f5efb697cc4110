"""``mmeff stream``: sound-event detection on a live stream with a streaming audio model.

Input: a WAV file (any rate, any number of channels: down-mixed to mono), ``-`` for raw PCM on
stdin (``--stdin-format``, ``--stdin-rate``, ``--stdin-channels``), or nothing for a built-in demo
signal (clips of the generated ``audio_events`` data set, back to back).  The audio is cut into
chunks of ``--chunk-ms`` as it arrives (``--realtime`` paces a file to the clock), resampled to the
model's rate by a streaming resampler, and fed to ``model.step``; an event is printed when the
frame posterior of a non-background class rises above ``--threshold`` (and when it ends).  The end
summary gives the real-time factor, the per-chunk latency (p50 / p99) and the peak memory;
``--plot`` draws the spectrogram under the posteriors.  ``--compile`` compiles the model's step
(:meth:`~mmeff.encoders.streaming.StreamingAudioEncoder.compile_step`) before the stream starts.

Weights: ``--checkpoint`` takes a weights file, a checkpoint directory or a training run directory
(its ``config.yaml`` supplies the model name and arguments).  Without one the model is untrained:
its posteriors are near chance, so the default threshold drops to ``1.1 / num_classes`` and the
events it prints mean nothing.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

import mmeff
from mmeff.layers.audio import StreamingResampler

from .data.audio_events import CLASSES, AudioEventsDataset
from .data.wav import read_wav

STDIN_FORMATS = {"s16le": ("<i2", 2.0 ** 15), "s32le": ("<i4", 2.0 ** 31), "f32le": ("<f4", 1.0),
                 "u8": ("u1", 128.0)}
DEFAULT_MODEL = "stream_mamba2_tiny"


# ----------------------------------------------------------------------------------- sources
@dataclass
class Source:
    """Where the audio comes from: ``chunks`` yields mono float32 pieces ``[n]`` at ``rate``."""
    name: str
    rate: int
    chunks: Iterator[torch.Tensor]
    note: str = ""


def _mono(wave: torch.Tensor) -> torch.Tensor:
    return wave.mean(0) if wave.shape[0] > 1 else wave[0]


def _slices(wave: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, wave.shape[0], size):
        yield wave[start:start + size]


def wav_source(path: str, chunk_ms: float) -> Source:
    """A WAV file, down-mixed to mono (ValueError with a one-line reason for a bad file)."""
    try:
        wave, rate = read_wav(path)
    except (IsADirectoryError, PermissionError) as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    channels = f", {wave.shape[0]} channels down-mixed" if wave.shape[0] > 1 else ""
    return Source(path, rate, _slices(_mono(wave), _chunk_samples(rate, chunk_ms)),
                  f"{wave.shape[1] / rate:.2f} s at {rate} Hz{channels}")


def stdin_source(fmt: str, rate: int, channels: int, chunk_ms: float, stream=None) -> Source:
    """Raw interleaved PCM from ``stream`` (default: stdin), decoded chunk by chunk as it arrives."""
    if fmt not in STDIN_FORMATS:
        raise ValueError(f"--stdin-format: expected one of {sorted(STDIN_FORMATS)}, got {fmt!r}")
    if rate <= 0 or channels <= 0:
        raise ValueError(f"--stdin-rate and --stdin-channels must be positive, got {rate}, {channels}")
    dtype, scale = STDIN_FORMATS[fmt]
    frame_bytes = np.dtype(dtype).itemsize * channels
    stream = stream or sys.stdin.buffer

    def chunks() -> Iterator[torch.Tensor]:
        want = _chunk_samples(rate, chunk_ms) * frame_bytes
        carry = b""
        while True:
            data = carry + stream.read(want - len(carry))
            if not data:
                return
            whole = len(data) - len(data) % frame_bytes
            data, carry = data[:whole], data[whole:]
            if data:
                x = np.frombuffer(data, dtype=dtype).astype(np.float32)
                x = (x - 128.0) / scale if fmt == "u8" else x / scale
                yield _mono(torch.from_numpy(x.reshape(-1, channels).T.copy()))
            if len(data) + len(carry) < want:
                if carry:
                    raise ValueError(f"stdin: the stream ended inside a sample frame ({len(carry)} "
                                     f"stray bytes; frames are {frame_bytes} bytes)")
                return

    return Source("stdin", rate, chunks(), f"raw {fmt}, {channels} channel(s) at {rate} Hz")


def demo_source(chunk_ms: float, clips: int = 8, rate: int = 16000) -> Source:
    """``clips`` 1-second clips of ``audio_events`` (test split) back to back."""
    ds = AudioEventsDataset("test", num_samples=clips, sample_rate=rate)
    items = [ds[i] for i in range(clips)]
    wave = torch.cat([it["input"] for it in items])
    truth = "; ".join(f"{i}s: {it['caption']}" for i, it in enumerate(items))
    return Source("demo signal", rate, _slices(wave, _chunk_samples(rate, chunk_ms)),
                  f"{len(wave) / rate:.1f} s of generated audio_events clips ({truth})")


def _chunk_samples(rate: int, chunk_ms: float) -> int:
    n = int(round(rate * chunk_ms / 1000))
    if n <= 0:
        raise ValueError(f"--chunk-ms: expected a positive duration, got {chunk_ms}")
    return n


# ------------------------------------------------------------------------------------ model
def _read_weights(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_checkpoint(path: str) -> Tuple[str, Optional[str], Dict[str, Any]]:
    """``(weights file, model name or None, model kwargs)`` of a weights file, a checkpoint
    directory (``model.safetensors`` inside) or a training run directory (its latest checkpoint and
    ``config.yaml``)."""
    from . import checkpoint as ckpt
    if not os.path.exists(path):
        raise FileNotFoundError(f"--checkpoint {path!r} does not exist")
    run_dir = None
    if os.path.isdir(path):
        latest = ckpt.latest(path)
        if latest is not None:
            run_dir, path = path, latest
        else:
            run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        path = os.path.join(path, "model.safetensors")
        if not os.path.isfile(path):
            raise ValueError(f"--checkpoint: no model.safetensors in {os.path.dirname(path)!r}")
    cfg_path = os.path.join(run_dir, "config.yaml") if run_dir else ""
    if not os.path.isfile(cfg_path):
        return path, None, {}
    from .config import load_config
    cfg = load_config(cfg_path)
    return path, cfg.model.name, dict(cfg.model.kwargs)


def build_model(name: Optional[str], checkpoint: Optional[str]) -> Tuple[torch.nn.Module, List[str], str]:
    """The streaming model (eval mode), its class names, and the name it was built as."""
    kwargs: Dict[str, Any] = {}
    num_classes = len(CLASSES)
    weights = None
    if checkpoint:
        weights, cfg_name, kwargs = resolve_checkpoint(checkpoint)
        if name and cfg_name and name != cfg_name:
            raise ValueError(f"--model {name} does not match the checkpoint's run config ({cfg_name})")
        name = name or cfg_name
        try:
            state = _read_weights(weights)
        except Exception as e:  # corrupt or foreign file
            raise ValueError(f"could not read checkpoint {weights!r}: {type(e).__name__}: {e}") from None
        heads = [v for k, v in state.items() if k.endswith("head.weight")]
        num_classes = heads[0].shape[0] if heads else num_classes
    name = name or DEFAULT_MODEL
    kwargs.pop("frame_logits", None)
    model = mmeff.create_model(name, num_classes=num_classes, checkpoint_path=weights, **kwargs)
    if not all(hasattr(model, a) for a in ("init_state", "step", "flush")):
        raise ValueError(f"--model {name} is not a streaming model; pick one of "
                         f"{', '.join(mmeff.list_models('stream_*'))}")
    names = list(CLASSES) if num_classes == len(CLASSES) else [f"class {i}" for i in range(num_classes)]
    return model.eval(), names, name


# ----------------------------------------------------------------------------------- events
@dataclass
class EventTracker:
    """Turns frame posteriors into event onsets and offsets.

    A frame's winner is its most probable class if that is not the background (class 0) and its
    posterior reaches ``threshold``; an event starts when a winner holds for ``min_frames`` frames
    and ends at the first frame it does not win.
    """
    names: List[str]
    threshold: float
    frame_seconds: float
    min_frames: int = 2
    out: Any = None
    events: List[Tuple[float, float, str, float]] = field(default_factory=list)
    _cand: Optional[int] = None
    _cand_start: float = 0.0
    _cand_len: int = 0
    _cand_peak: float = 0.0
    _active: bool = False

    def update(self, probs: torch.Tensor, first_index: int) -> None:
        """Frames ``first_index, first_index + 1, ...`` with posteriors ``probs[n, C]``."""
        conf, cls = probs.max(-1)
        for i, (c, p) in enumerate(zip(cls.tolist(), conf.tolist())):
            t = (first_index + i) * self.frame_seconds
            winner = c if c != 0 and p >= self.threshold else None
            if winner != self._cand:
                self._end(t)
                self._cand, self._cand_start, self._cand_len, self._cand_peak = winner, t, 0, 0.0
            if winner is None:
                continue
            self._cand_len += 1
            self._cand_peak = max(self._cand_peak, p)
            if not self._active and self._cand_len >= self.min_frames:
                self._active = True
                self._print(f"{self._cand_start:8.2f} s  {self.names[winner]:<16} {self._cand_peak:.2f}")

    def _end(self, t: float) -> None:
        if self._active:
            name = self.names[self._cand]
            self.events.append((self._cand_start, t, name, self._cand_peak))
            self._print(f"{t:8.2f} s  {'end ' + name:<16} ({t - self._cand_start:.2f} s, "
                        f"peak {self._cand_peak:.2f})")
        self._active = False

    def close(self, t: float) -> None:
        self._end(t)
        self._cand = None

    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)


# -------------------------------------------------------------------------------------- run
def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _state_bytes(state: Dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def run(args: argparse.Namespace) -> int:
    """The ``mmeff stream`` command (see the module docstring)."""
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    model, names, name = build_model(args.model, args.checkpoint)
    if args.input is None:
        src = demo_source(args.chunk_ms)
    elif args.input == "-":
        src = stdin_source(args.stdin_format, args.stdin_rate, args.stdin_channels, args.chunk_ms)
    else:
        src = wav_source(args.input, args.chunk_ms)
    threshold = args.threshold
    trained = bool(args.checkpoint)
    if threshold is None:
        threshold = 0.5 if trained else 1.1 / len(names)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold: expected a probability in [0, 1], got {threshold}")
    rate = model.frontend.sample_rate
    hop_s = model.samples_per_token / rate
    lookahead_ms = model.lookahead * model.frontend.hop_ms
    n_params = sum(p.numel() for p in model.parameters())
    print(f"mmeff stream: {name} ({n_params / 1e6:.2f}M parameters, "
          f"{'weights ' + args.checkpoint if trained else 'untrained: events are meaningless'}), "
          f"{torch.get_num_threads()} thread(s)")
    print(f"input: {src.name}: {src.note}")
    print(f"chunks of {args.chunk_ms:g} ms, look-ahead {lookahead_ms:g} ms (latency "
          f"{args.chunk_ms + lookahead_ms:g} ms), frames of {hop_s * 1000:g} ms, threshold {threshold:.2f}")
    print(f"{'time':>10}  {'event':<16} conf")

    if args.compile:  # compile now, on a throwaway stream, so that the timings below are steady
        t0 = time.perf_counter()
        model.compile_step()
        warm = model.init_state(1)  # made as the stream's below (outside inference mode): same graphs
        with torch.inference_mode():
            for _ in range(2):
                _, warm = model.step(torch.zeros(1, _chunk_samples(rate, args.chunk_ms)), warm)
        print(f"compiled the model's step in {time.perf_counter() - t0:.1f} s (not counted below)")
    resampler = StreamingResampler(src.rate, rate)
    tracker = EventTracker(names, threshold, hop_s, args.min_frames)
    state, rs_state = model.init_state(1), resampler.init_state(1)
    latencies: List[float] = []
    waves: List[torch.Tensor] = []
    probs_all: List[torch.Tensor] = []
    seconds_in = 0.0
    wall0 = time.perf_counter()

    def feed(x: torch.Tensor) -> None:
        nonlocal state
        logits, state = model.step(x, state)
        if logits.shape[1]:
            probs = logits[0].float().softmax(-1)
            idx, valid = model.output_frames(state, logits.shape[1])
            keep = valid[0]
            tracker.update(probs[keep], int(idx[0, keep][0]) if keep.any() else 0)
            if args.plot:
                probs_all.append(probs[keep])
        if args.plot:
            waves.append(x[0])

    with torch.inference_mode():
        for chunk in src.chunks:
            seconds_in += chunk.shape[0] / src.rate
            if args.realtime:
                time.sleep(max(0.0, wall0 + seconds_in - time.perf_counter()))
            t0 = time.perf_counter()
            x, rs_state = resampler.step(chunk[None], rs_state)
            feed(x)
            latencies.append(time.perf_counter() - t0)
        if seconds_in == 0:
            raise ValueError(f"{src.name}: no audio received")
        t0 = time.perf_counter()
        feed(resampler.flush(rs_state))
        logits, state = model.flush(state)
        if logits.shape[1]:
            idx, valid = model.output_frames(state, logits.shape[1])
            probs = logits[0].float().softmax(-1)[valid[0]]
            if valid[0].any():
                tracker.update(probs, int(idx[0, valid[0]][0]))
            if args.plot:
                probs_all.append(probs)
        latencies.append(time.perf_counter() - t0)
        tracker.close(float(state["tokens"][0] - model.delay) * hop_s)
        clip = model.clip_logits(state)[0].softmax(-1)
    compute = sum(latencies)
    lat_ms = sorted(v * 1e3 for v in latencies)
    p99 = lat_ms[min(len(lat_ms) - 1, int(math.ceil(0.99 * len(lat_ms))) - 1)]
    top = clip.topk(min(3, len(names)))
    print(f"clip: " + ", ".join(f"{names[c]} {p:.2f}" for p, c in zip(top.values.tolist(), top.indices.tolist())))
    print(f"summary: {seconds_in:.2f} s of audio in {compute:.3f} s of compute: real-time factor "
          f"{compute / seconds_in:.4f} | per-chunk latency p50 {statistics.median(lat_ms):.2f} ms, "
          f"p99 {p99:.2f} ms ({len(lat_ms)} chunks) | peak memory {_peak_rss_mib():.0f} MiB RSS "
          f"(stream state {_state_bytes(state) / 1024:.0f} KiB) | {len(tracker.events)} events")
    if args.plot:
        plot(args.plot, model, torch.cat(waves), torch.cat(probs_all) if probs_all else None,
             names, tracker.events, hop_s)
        print(f"plot: {args.plot}")
    return 0


def plot(path: str, model: torch.nn.Module, wave: torch.Tensor, probs: Optional[torch.Tensor],
         names: List[str], events: List[Tuple[float, float, str, float]], hop_s: float) -> None:
    """Spectrogram (the model's features) over the non-background posteriors and the events."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with torch.inference_mode():
        feats = model.frontend(wave[None])[0].T.numpy()  # [n_mels, frames]
    dur = wave.shape[0] / model.frontend.sample_rate
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(12, 6), sharex=True,
                                   gridspec_kw=dict(height_ratios=(1, 1.3)))
    ax0.imshow(feats, origin="lower", aspect="auto", extent=(0, dur, 0, feats.shape[0]), cmap="magma")
    ax0.set(ylabel="mel bin", title=f"{model.frontend.features} features")
    if probs is not None and probs.shape[0]:
        p = probs[:, 1:].T.numpy()
        ax1.imshow(p, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis",
                   extent=(0, probs.shape[0] * hop_s, 0.5, len(names) - 0.5))
        ax1.set_yticks(range(1, len(names)), names[1:], fontsize=7)
    for start, end, name, _ in events:
        k = names.index(name)
        ax1.plot([start, end], [k, k], color="red", lw=3, solid_capstyle="butt")
    ax1.set(xlabel="time (s)", title="frame posteriors (red: detected events)", xlim=(0, dur))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(s: argparse.ArgumentParser) -> None:
    """The options of ``mmeff stream``."""
    s.add_argument("input", nargs="?", help="a WAV file, '-' for raw PCM on stdin, or nothing for a demo signal")
    s.add_argument("--model", help=f"a streaming model (default {DEFAULT_MODEL}, or the checkpoint run's)")
    s.add_argument("--checkpoint", help="weights file, checkpoint directory or training run directory")
    s.add_argument("--chunk-ms", type=float, default=160.0, help="chunk length in ms (default 160)")
    s.add_argument("--realtime", action="store_true", help="pace the input to the clock")
    s.add_argument("--threshold", type=float,
                   help="posterior that starts an event (default 0.5; 1.1/classes without a checkpoint)")
    s.add_argument("--min-frames", type=int, default=2, help="frames an event must last to be shown")
    s.add_argument("--stdin-format", default="s16le", help=f"raw PCM format on stdin: {sorted(STDIN_FORMATS)}")
    s.add_argument("--stdin-rate", type=int, default=16000, help="sample rate of stdin PCM (Hz)")
    s.add_argument("--stdin-channels", type=int, default=1, help="interleaved channels on stdin")
    s.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small chunks run fastest on one)")
    s.add_argument("--plot", help="write the spectrogram and posteriors to this PNG")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the model's step first (about a minute; faster chunks after)")
