"""Audio front ends: log-mel or Kaldi fbank features with causal framing, streaming, resampling,
fixed normalisation and SpecAugment.

Framing is causal: the waveform is left-padded by ``win - hop`` zeros, so frame ``i`` covers samples
``[(i+1)*hop - win, (i+1)*hop)`` and ends exactly at sample ``(i+1)*hop``; ``N`` samples give
``N // hop`` frames.  A stream therefore only carries the last ``win - hop`` samples (plus any
samples of an unfinished frame), and the features of a stream fed chunk by chunk equal those of
the whole waveform (every frame sees the same samples and the transforms are per frame).

Features:
- ``'logmel'``: ``log(mel power + 1e-6)`` with the window and filterbank of
  ``torchaudio.transforms.MelSpectrogram``, applied as ``torch.stft`` and one matmul (batched; the
  fast default for streaming; the same values as the transform, and traceable by
  ``torch.compile`` in one graph, which the transform is not).
- ``'fbank'``: ``torchaudio.compliance.kaldi.fbank`` as AST uses it (Hanning window, HTK mel,
  no dither; https://arxiv.org/abs/2104.01778).

Normalisation is fixed (``(x - mean) / std`` with dataset-level scalars held as buffers, never per
utterance, which a stream cannot know); :meth:`AudioFrontend.fit_normalization` measures them on a
dataset.  SpecAugment (https://arxiv.org/abs/1904.08779) masks frequency bands and time spans in
training mode only, and never in :meth:`AudioFrontend.step`.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
import torchaudio
import torchaudio.compliance.kaldi as kaldi
from einops import rearrange
from torch import nn

FEATURES = ("logmel", "fbank")
# (mean, std) of the features of the built-in ``audio_events`` training clips (16 kHz), measured with
# ``fit_normalization`` on its first 256 clips (logmel: 80 bins, fbank: 128); refit for other data.
DEFAULT_NORM = {"logmel": (-5.47, 2.68), "fbank": (-7.09, 3.88)}


def as_waveform(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """``[B, samples]`` or ``[B, 1, samples]`` -> ``[B, samples]`` (a ValueError otherwise)."""
    if x.dim() == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 2:
        raise ValueError(f"{name}: expected input waveform [B, samples] or [B, 1, samples] (mono), "
                         f"got {tuple(x.shape)}")
    return x


class AudioFrontend(nn.Module):
    """Waveform ``[B, samples]`` -> normalised features ``[B, frames, n_mels]``, offline or streaming.

    Args:
        sample_rate: the model's sample rate in Hz (use :meth:`resample` for other rates).
        features: 'logmel' or 'fbank'.
        n_mels: mel bins.
        win_ms, hop_ms: window and hop in milliseconds (25 and 10).
        norm_mean, norm_std: dataset-level normalisation; None takes ``DEFAULT_NORM[features]``.
        freq_mask, time_mask: SpecAugment's widest frequency mask (bins) and time mask (frames);
            0 turns that mask off.
        num_masks: masks of each kind per example.
    """

    def __init__(self, sample_rate: int = 16000, features: str = "logmel", n_mels: int = 80,
                 win_ms: float = 25.0, hop_ms: float = 10.0, norm_mean: Optional[float] = None,
                 norm_std: Optional[float] = None, freq_mask: int = 0, time_mask: int = 0,
                 num_masks: int = 2, device=None) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"features: expected one of {FEATURES}, got {features!r}")
        win, hop = sample_rate * win_ms / 1000, sample_rate * hop_ms / 1000
        if win != int(win) or hop != int(hop) or not 0 < hop <= win:
            raise ValueError(f"win_ms/hop_ms: expected whole numbers of samples with 0 < hop <= win at "
                             f"{sample_rate} Hz, got win={win}, hop={hop}")
        self.sample_rate, self.features, self.n_mels = sample_rate, features, n_mels
        self.win, self.hop = int(win), int(hop)
        self.win_ms, self.hop_ms = win_ms, hop_ms
        self.context = self.win - self.hop      # samples a stream carries from one frame to the next
        mean, std = DEFAULT_NORM[features]
        self.register_buffer("norm_mean", torch.tensor(mean if norm_mean is None else norm_mean,
                                                       device=device))
        self.register_buffer("norm_std", torch.tensor(std if norm_std is None else norm_std,
                                                      device=device))
        self.mel = None
        if features == "logmel":
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate, n_fft=self.win, win_length=self.win, hop_length=self.hop, center=False,
                n_mels=n_mels).to(device)
        self.freq_mask, self.time_mask, self.num_masks = freq_mask, time_mask, num_masks

    def num_frames(self, num_samples: int) -> int:
        """Frames produced from ``num_samples`` samples."""
        return num_samples // self.hop

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised features of every whole frame of ``x[B, L]``, frame i = ``x[i*hop:i*hop+win]``.

        Returns ``[B, (L - win) // hop + 1, n_mels]`` (``L >= win``), always in fp32.
        """
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.features == "logmel":
                spec = torch.stft(x, self.win, self.hop, self.win, self.mel.spectrogram.window,
                                  center=False, return_complex=True).abs().pow(2)  # [B, F, T]
                return torch.log(spec.transpose(1, 2) @ self.mel.mel_scale.fb + 1e-6)
            return torch.stack([kaldi.fbank(
                w[None], num_mel_bins=self.n_mels, frame_length=self.win_ms, frame_shift=self.hop_ms,
                sample_frequency=self.sample_rate, dither=0.0, window_type="hanning",
                htk_compat=True, use_energy=False, snip_edges=True) for w in x])

    def _normalize(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.norm_mean) / self.norm_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Offline features ``[B, samples // hop, n_mels]`` (SpecAugment in training mode)."""
        x = as_waveform(x)
        if x.shape[1] < self.hop:
            raise ValueError(f"x: expected at least one frame ({self.hop} samples), got {x.shape[1]}")
        f = self._normalize(self._raw(F.pad(x, (self.context, 0))))
        if self.training and (self.freq_mask or self.time_mask):
            f = self.spec_augment(f)
        return f

    def spec_augment(self, f: torch.Tensor) -> torch.Tensor:
        """``num_masks`` frequency and time masks per example, set to 0 (the normalised mean)."""
        f = rearrange(f, "b t m -> b m t")
        for axis, width in ((1, self.freq_mask), (2, self.time_mask)):
            for _ in range(self.num_masks if width else 0):
                f = torchaudio.functional.mask_along_axis_iid(f, min(width, f.shape[axis]), 0.0, axis)
        return rearrange(f, "b m t -> b t m")

    # ----------------------------------------------------------------------------- streaming
    def init_state(self, batch: int, device=None) -> Dict[str, torch.Tensor]:
        """``{"wave": zeros[B, win - hop]}``: the samples before the start of a stream."""
        device = device or self.norm_mean.device
        return {"wave": torch.zeros(batch, self.context, device=device)}

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor]
             ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Continue the streams with ``x[B, n]`` (any ``n``); return the frames completed by it
        ``[B, f, n_mels]`` (``f`` may be 0) and the new state."""
        buf = torch.cat([state["wave"], as_waveform(x).to(state["wave"].dtype)], dim=1)
        f = (buf.shape[1] - self.context) // self.hop
        if f == 0:
            return buf.new_zeros(buf.shape[0], 0, self.n_mels), {"wave": buf}
        feats = self._normalize(self._raw(buf[:, :f * self.hop + self.context]))
        return feats, {"wave": buf[:, f * self.hop:]}

    def pending(self, state: Dict[str, torch.Tensor]) -> int:
        """Samples of an unfinished frame held in ``state`` (0 at frame boundaries)."""
        return state["wave"].shape[1] - self.context

    # -------------------------------------------------------------------------- utilities
    def resample(self, x: torch.Tensor, orig_freq: int) -> torch.Tensor:
        """Resample ``x[..., samples]`` from ``orig_freq`` Hz to the model's rate (offline)."""
        if orig_freq == self.sample_rate:
            return x
        return torchaudio.functional.resample(x, orig_freq, self.sample_rate)

    @torch.no_grad()
    def fit_normalization(self, waves: Iterable[torch.Tensor]) -> Tuple[float, float]:
        """Set ``norm_mean`` / ``norm_std`` to the mean / std of the features of ``waves`` (each
        ``[samples]`` or ``[B, samples]``, at the model's rate); return them."""
        total, sq, n = 0.0, 0.0, 0
        for w in waves:
            w = w[None] if w.dim() == 1 else as_waveform(w, "waves")
            f = self._raw(F.pad(w.to(self.norm_mean.device), (self.context, 0))).double()
            total, sq, n = total + f.sum().item(), sq + f.square().sum().item(), n + f.numel()
        if n == 0:
            raise ValueError("waves: expected at least one waveform of one frame or more, got none")
        mean = total / n
        std = math.sqrt(max(sq / n - mean ** 2, 1e-12))
        self.norm_mean.fill_(mean)
        self.norm_std.fill_(std)
        return mean, std

    def extra_repr(self) -> str:
        return (f"features={self.features!r}, sample_rate={self.sample_rate}, n_mels={self.n_mels}, "
                f"win={self.win}, hop={self.hop}")


class StreamingResampler(nn.Module):
    """Resample a stream chunk by chunk with torchaudio's windowed-sinc kernel; the chunks'
    outputs concatenated (after :meth:`flush`) equal ``torchaudio.functional.resample`` of the
    whole signal.

    Output block ``j`` (``new'`` samples, rates reduced by their gcd) needs input up to sample
    ``(j+1)*orig' + width``, so the resampler holds back ``width`` input samples (its latency).

    Args:
        orig_freq: input rate in Hz.  new_freq: output rate in Hz.
    """

    def __init__(self, orig_freq: int, new_freq: int) -> None:
        super().__init__()
        for name, v in (("orig_freq", orig_freq), ("new_freq", new_freq)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int sample rate, got {v!r}")
        self.orig_freq, self.new_freq = orig_freq, new_freq
        self.resampler = torchaudio.transforms.Resample(orig_freq, new_freq)
        g = math.gcd(orig_freq, new_freq)
        self.orig, self.new = orig_freq // g, new_freq // g      # one block: orig in, new out
        self.width = getattr(self.resampler, "width", 0)
        self.kernel_size = 2 * self.width + self.orig

    @property
    def identity(self) -> bool:
        return self.orig_freq == self.new_freq

    def init_state(self, batch: int, device=None) -> Dict[str, torch.Tensor]:
        """The left padding, and counts of samples in and out."""
        return {"buf": torch.zeros(batch, self.width, device=device),
                "n_in": torch.zeros((), dtype=torch.long, device=device),
                "n_out": torch.zeros((), dtype=torch.long, device=device)}

    def _blocks(self, buf: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        nb = (buf.shape[1] - self.kernel_size) // self.orig + 1 if buf.shape[1] >= self.kernel_size else 0
        if nb == 0:
            return buf.new_zeros(buf.shape[0], 0), buf
        y = F.conv1d(buf[:, None, :(nb - 1) * self.orig + self.kernel_size],
                     self.resampler.kernel.to(buf), stride=self.orig)      # [B, new, nb]
        return rearrange(y, "b n k -> b (k n)"), buf[:, nb * self.orig:]

    def step(self, x: torch.Tensor, state: Dict[str, torch.Tensor]
             ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Continue with ``x[B, n]``; return the output samples ready so far and the new state."""
        if self.identity:
            return x, state
        y, buf = self._blocks(torch.cat([state["buf"], x.to(state["buf"].dtype)], dim=1))
        return y, {"buf": buf, "n_in": state["n_in"] + x.shape[1], "n_out": state["n_out"] + y.shape[1]}

    def flush(self, state: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The remaining output at the end of the stream (the input padded with zeros, as offline)."""
        if self.identity:
            return state["buf"][:, :0]
        buf = F.pad(state["buf"], (0, self.width + self.orig))
        y, _ = self._blocks(buf)
        # the output length torchaudio's resample keeps (its own rounding, for equality)
        target = int(torch.ceil(torch.as_tensor(self.new * int(state["n_in"]) / self.orig)))
        return y[:, :max(0, target - int(state["n_out"]))]
