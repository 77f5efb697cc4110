"""``audio_events``: generated clips of sound events with clip, frame and caption labels.

A clip (default 1 s at 16 kHz) holds 1 to ``max_events`` non-overlapping events separated by
silences, over faint background noise: DTMF digit tones (the ITU-T Q.23 row/column frequency pairs,
https://en.wikipedia.org/wiki/Dual-tone_multi-frequency_signaling), rising and falling exponential
chirps and white-noise bursts, each with a random gain and 5 ms raised-cosine fades. Labels:

- ``label``: class of the first event (``target='event'``) or of the longest one
  (``target='dominant'``); with ``multi_label=True`` a float multi-hot of every class present in
  the clip (silence included when some frame is silent), for AudioSet-style mAP;
- ``frame_labels``: the class at the centre of each ``frame_hop``-sample frame (0 = silence);
- ``caption``: e.g. "a rising chirp then the digit 7 tone".

A clip is a function of ``(seed, split, index)`` only (see ``base.sample_rng``).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from .base import (check_choice, check_index, check_positive, register_dataset, sample_rng,
                   torch_generator)

DTMF_ROWS = (697.0, 770.0, 852.0, 941.0)
DTMF_COLS = (1209.0, 1336.0, 1477.0)
DTMF_KEYS = ("123", "456", "789", "*0#")   # keypad layout: row by frequency, column by frequency
CLASSES = (["silence"] + [f"digit {d}" for d in range(10)]
           + ["rising chirp", "falling chirp", "noise burst"])
RISING, FALLING, NOISE = 11, 12, 13
TARGETS = ("event", "dominant")
DEFAULT_NUM_SAMPLES = {"train": 2000, "val": 500, "test": 500}
FADE_SECONDS = 0.005


def dtmf_frequencies(digit: int) -> Tuple[float, float]:
    """(row, column) frequencies in Hz of DTMF ``digit`` 0-9."""
    for r, keys in enumerate(DTMF_KEYS):
        c = keys.find(str(digit))
        if c >= 0 and 0 <= digit <= 9:
            return DTMF_ROWS[r], DTMF_COLS[c]
    raise ValueError(f"digit: expected an int in 0..9, got {digit!r}")


def tone(freqs: Tuple[float, ...], num_samples: int, sample_rate: int,
         phases: Optional[Tuple[float, ...]] = None) -> torch.Tensor:
    """Mean of sinusoids at ``freqs`` Hz (peak <= 1); e.g. a DTMF digit. # [num_samples]"""
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    phases = phases or (0.0,) * len(freqs)
    wave = sum(torch.sin(2 * math.pi * f * t + p) for f, p in zip(freqs, phases)) / len(freqs)
    return wave.float()


def chirp(f0: float, f1: float, num_samples: int, sample_rate: int, phase: float = 0.0) -> torch.Tensor:
    """Exponential sweep from ``f0`` to ``f1`` Hz over the whole length, peak 1. # [num_samples]"""
    duration = num_samples / sample_rate
    t = torch.arange(num_samples, dtype=torch.float64) / sample_rate
    k = math.log(f1 / f0) / duration                   # f(t) = f0 exp(k t); phase = integral of f
    return torch.sin(2 * math.pi * f0 * torch.expm1(k * t) / k + phase).float()


def event_phrase(label: int) -> str:
    """Caption words of one event class."""
    name = CLASSES[label]
    return f"the {name} tone" if name.startswith("digit") else f"a {name}"


@dataclass
class Event:
    """One event: class ``label``, samples ``[start, end)``, ``gain``, and its frequencies in Hz
    (DTMF pair or chirp start/end; unused for noise) and phase."""
    label: int
    start: int
    end: int
    gain: float
    freqs: Tuple[float, float] = (0.0, 0.0)
    phase: float = 0.0


def random_events(rng: random.Random, clip_samples: int, sample_rate: int, max_events: int,
                  event_seconds: Tuple[float, float]) -> List[Event]:
    """Draw 1..max_events events in time order with random silences between them."""
    n = rng.randint(1, max_events)
    shortest = event_seconds[0] * sample_rate
    longest = min(event_seconds[1] * sample_rate, 0.9 * clip_samples / n)   # events fill <= 90%
    lengths = [int(rng.uniform(shortest, max(shortest, longest))) for _ in range(n)]
    cuts = sorted(rng.uniform(0, clip_samples - sum(lengths)) for _ in range(n))   # gaps before each
    nyquist_guard = 0.45 * sample_rate
    events, offset = [], 0
    for length, cut in zip(lengths, cuts):
        label = rng.randrange(1, len(CLASSES))
        if label <= 10:
            freqs = dtmf_frequencies(label - 1)
        else:
            low, high = rng.uniform(300.0, 800.0), min(rng.uniform(2000.0, 5000.0), nyquist_guard)
            freqs = (low, high) if label == RISING else (high, low)
        start = int(cut) + offset
        events.append(Event(label, start, start + length, 10 ** (rng.uniform(-14.0, -3.0) / 20),
                            freqs, rng.uniform(0, 2 * math.pi)))
        offset += length
    return events


def synthesize(events: List[Event], clip_samples: int, sample_rate: int, gen: torch.Generator,
               noise_std: float) -> torch.Tensor:
    """Waveform of ``events`` over Gaussian background noise, clipped to [-1, 1]. # [clip_samples]"""
    wave = noise_std * torch.randn(clip_samples, generator=gen)
    fade_len = max(1, int(FADE_SECONDS * sample_rate))
    for ev in events:
        n = ev.end - ev.start
        if ev.label == NOISE:
            sig = 0.35 * torch.randn(n, generator=gen)               # RMS close to a tone's
        elif ev.label in (RISING, FALLING):
            sig = chirp(*ev.freqs, n, sample_rate, ev.phase)
        else:
            sig = tone(ev.freqs, n, sample_rate, (ev.phase, 2 * ev.phase))
        ramp = 0.5 - 0.5 * torch.cos(math.pi * torch.arange(min(fade_len, n // 2)) / fade_len)
        env = torch.ones(n)
        env[:len(ramp)], env[n - len(ramp):] = ramp, ramp.flip(0)
        wave[ev.start:ev.end] += ev.gain * env * sig
    return wave.clamp(-1.0, 1.0)


def frame_labels(events: List[Event], num_frames: int, frame_hop: int) -> torch.Tensor:
    """Class at the centre sample of each frame, 0 where no event sounds. # [num_frames] long"""
    centres = torch.arange(num_frames) * frame_hop + frame_hop // 2
    labels = torch.zeros(num_frames, dtype=torch.long)
    for ev in events:
        labels[(centres >= ev.start) & (centres < ev.end)] = ev.label
    return labels


@register_dataset("audio_events")
class AudioEventsDataset(Dataset):
    """Generated sound-event clips; see the module docstring.

    Args:
        split: 'train', 'val' or 'test'.
        num_samples: clips in this split (default 2000 train, 500 val / test).
        sample_rate: Hz (>= 8000).
        clip_seconds: clip length; every clip has ``round(clip_seconds * sample_rate)`` samples.
        frame_hop: samples per frame of ``frame_labels`` (default 10 ms at 16 kHz).
        target: 'event' (first event) or 'dominant' (longest event); ignored with ``multi_label``.
        multi_label: label is a float multi-hot [num_classes] of the classes present.
        max_events: most events per clip.
        event_seconds: (shortest, longest) event duration; the longest is cut down to
            ``0.9 * clip_seconds / n`` in clips of n events so that they always fit.
        noise_level: std of the background noise.
        seed: base seed; each clip is a function of (seed, split, index).
    """
    task = "audio"
    classes = list(CLASSES)
    num_classes = len(CLASSES)

    def __init__(self, split: str, *, num_samples: Optional[int] = None, sample_rate: int = 16000,
                 clip_seconds: float = 1.0, frame_hop: int = 160, target: str = "event",
                 multi_label: bool = False, max_events: int = 3,
                 event_seconds: Tuple[float, float] = (0.1, 0.3), noise_level: float = 0.003,
                 seed: int = 0):
        self.split = check_choice("split", split, tuple(DEFAULT_NUM_SAMPLES))
        self.num_samples = check_positive(
            "num_samples", DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples)
        self.sample_rate = check_positive("sample_rate", sample_rate, 8000)
        self.frame_hop = check_positive("frame_hop", frame_hop)
        self.clip_samples = round(clip_seconds * sample_rate)
        self.num_frames = self.clip_samples // frame_hop
        self.target = check_choice("target", target, TARGETS)
        self.multi_label = bool(multi_label)
        self.max_events = check_positive("max_events", max_events)
        shortest, longest = event_seconds
        if not (frame_hop / sample_rate <= shortest <= longest
                and max_events * shortest <= 0.9 * clip_seconds):
            raise ValueError(
                f"event_seconds: expected (shortest, longest) with one frame ({frame_hop / sample_rate} s) "
                f"<= shortest <= longest and max_events * shortest <= 0.9 * clip_seconds "
                f"({0.9 * clip_seconds} s), got {event_seconds!r} with max_events={max_events}")
        self.event_seconds, self.noise_level, self.seed = tuple(event_seconds), noise_level, seed

    def __len__(self) -> int:
        return self.num_samples

    def events(self, index: int) -> Tuple[List[Event], torch.Generator]:
        """Events of clip ``index`` and the generator for its noise."""
        rng = sample_rng("audio_events", self.seed, self.split, check_index(index, len(self)))
        evs = random_events(rng, self.clip_samples, self.sample_rate, self.max_events, self.event_seconds)
        return evs, torch_generator(rng)

    def __getitem__(self, index: int) -> dict:
        evs, gen = self.events(index)
        wave = synthesize(evs, self.clip_samples, self.sample_rate, gen, self.noise_level)
        frames = frame_labels(evs, self.num_frames, self.frame_hop)
        if self.multi_label:
            label = (torch.bincount(frames, minlength=self.num_classes) > 0).float()
        elif self.target == "event":
            label = evs[0].label
        else:
            label = max(evs, key=lambda e: e.end - e.start).label
        caption = " then ".join(event_phrase(e.label) for e in evs)
        return {"input": wave, "label": label, "caption": caption, "frame_labels": frames}
