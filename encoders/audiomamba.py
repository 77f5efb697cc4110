"""Audio Mamba (AuM): bidirectional Mamba over spectrogram patches.

Audio Mamba: Bidirectional State Space Model for Audio Representation Learning (Erol et al. 2024),
https://arxiv.org/abs/2406.03344: Kaldi fbank features (128 mel bins, 25 ms / 10 ms, as AST,
https://arxiv.org/abs/2104.01778) cut into 16x16 patches over (time, mel), a class token in the
middle of the sequence, a learned position table, 24 blocks of RMSNorm -> bidirectional Mamba
(Vim's v2 block: ``mamba`` with ``causal=False``) with no feed-forward, a final norm and a linear
head on the class token.  Tiny/Small/Base: width 192/384/768.

The model is Vim's :class:`encoders._vision.IsotropicEncoder` on the spectrogram (one input channel,
time as height, mel as width) behind an :class:`mmeff.layers.AudioFrontend`.  Any clip length
works: the frames are zero-padded (in normalised units) to a multiple of the patch, and the
position table, made for ``clip_samples``, is resampled along time.  ``mixer=`` / ``scan=``
overrides work as for Vim.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs

from mmeff._registry import register_model
from mmeff.layers import resample_pos_embed
from mmeff.layers.audio import AudioFrontend

from ._audio import audio_cfg, set_waveform_input
from ._vision import IsotropicEncoder, MixerSpec, create_encoder, strip_prefixes


class AudioMamba(IsotropicEncoder):
    """AuM: :class:`AudioFrontend` -> spectrogram patches -> Vim encoder.

    Args:
        clip_samples: clip length the position table is made for (others are resampled).
        sample_rate, features, n_mels, norm_mean, norm_std: the front end (:class:`AudioFrontend`).
        spec_augment: SpecAugment in training (``n_mels // 5`` bins, 20 frames, 2 masks of each).
        patch_size: patch side over (frames, mel bins); ``n_mels`` must divide by it.
        Other arguments: as :class:`IsotropicEncoder`.
    """

    def __init__(self, clip_samples: int = 160000, sample_rate: int = 16000, features: str = "fbank",
                 n_mels: int = 128, norm_mean: Optional[float] = None, norm_std: Optional[float] = None,
                 spec_augment: bool = True, patch_size: int = 16, num_classes: int = 527,
                 embed_dim: int = 192, depth: int = 24, mixer: MixerSpec = "mamba",
                 mixer_kwargs: Optional[dict] = None, scan: Optional[str] = None,
                 scan_kwargs: Optional[dict] = None, mlp_ratio: float = 0.0, class_token: bool = True,
                 global_pool: str = "token", norm_layer: Any = "rmsnorm", act_layer: Any = "gelu",
                 residual_in_fp32: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 device=None, dtype=None) -> None:
        if n_mels % patch_size:
            raise ValueError(f"n_mels ({n_mels}) must be divisible by patch_size ({patch_size})")
        frontend = AudioFrontend(
            sample_rate, features, n_mels, norm_mean=norm_mean, norm_std=norm_std,
            freq_mask=n_mels // 5 if spec_augment else 0, time_mask=20 if spec_augment else 0,
            device=device)
        frames = -(-frontend.num_frames(clip_samples) // patch_size) * patch_size
        super().__init__(img_size=(frames, n_mels), patch_size=patch_size, in_chans=1,
                         num_classes=num_classes, embed_dim=embed_dim, depth=depth, mixer=mixer,
                         mixer_kwargs=mixer_kwargs, scan=scan, scan_kwargs=scan_kwargs,
                         mlp_ratio=mlp_ratio, class_token=class_token, pos_embed=True,
                         global_pool=global_pool, norm_layer=norm_layer, act_layer=act_layer,
                         residual_in_fp32=residual_in_fp32, drop_rate=drop_rate,
                         drop_path_rate=drop_path_rate, device=device, dtype=dtype)
        self.clip_samples, self.frontend = clip_samples, frontend
        for info in self.feature_info:  # input samples per patch row (time); mel is the other axis
            info["reduction"] = patch_size * self.frontend.hop

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """Waveform -> normalised features as a one-channel image ``[B, 1, frames, n_mels]``, the
        frames zero-padded to a multiple of the patch."""
        f = self.frontend(x)  # [B, F, M]
        p = self.patch_embed.patch_size[0]
        return F.pad(f, (0, 0, 0, -f.shape[1] % p))[:, None].to(self.patch_embed.proj.weight.dtype)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        return super()._embed(self.spectrogram(x))

    @staticmethod
    def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: "AudioMamba"
                             ) -> Dict[str, torch.Tensor]:
        """Strip wrapper prefixes; resample a position table made for another clip length."""
        out = strip_prefixes(state_dict)
        v = out.get("pos_embed")
        if v is not None and v.shape != model.pos_embed.shape:
            mel_patches = model.base_grid[1]
            out["pos_embed"] = resample_pos_embed(v, model.base_grid, (v.shape[1] // mel_patches, mel_patches))
        return out


default_cfgs = generate_default_cfgs({
    "audiomamba_test": audio_cfg("patch_embed.proj"),
    "audiomamba_tiny": audio_cfg("patch_embed.proj"),
    "audiomamba_small": audio_cfg("patch_embed.proj"),
    "audiomamba_base": audio_cfg("patch_embed.proj"),
})

_AUM = dict(patch_size=16, depth=24, mixer="mamba", mixer_kwargs=dict(d_state=16, expand=2))

SIZES = {
    "audiomamba_test": {**_AUM, "embed_dim": 32, "depth": 2, "n_mels": 32, "clip_samples": 16000,
                        "mixer_kwargs": dict(d_state=4, expand=2)},
    "audiomamba_tiny": {**_AUM, "embed_dim": 192},
    "audiomamba_small": {**_AUM, "embed_dim": 384},
    "audiomamba_base": {**_AUM, "embed_dim": 768},
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> AudioMamba:
    model = create_encoder(AudioMamba, variant, pretrained, SIZES, kwargs)
    return set_waveform_input(model, kwargs.get("clip_samples", SIZES[variant].get("clip_samples", 160000)))


@register_model
def audiomamba_test(pretrained: bool = False, **kwargs: Any) -> AudioMamba:
    """Tiny test size (2 blocks of width 32, 32 mel bins, 1 s clips)."""
    return _create("audiomamba_test", pretrained, **kwargs)


@register_model
def audiomamba_tiny(pretrained: bool = False, **kwargs: Any) -> AudioMamba:
    """AuM-Tiny: width 192, 24 bidirectional Mamba blocks, 10 s clips."""
    return _create("audiomamba_tiny", pretrained, **kwargs)


@register_model
def audiomamba_small(pretrained: bool = False, **kwargs: Any) -> AudioMamba:
    """AuM-Small: width 384, 24 bidirectional Mamba blocks, 10 s clips."""
    return _create("audiomamba_small", pretrained, **kwargs)


@register_model
def audiomamba_base(pretrained: bool = False, **kwargs: Any) -> AudioMamba:
    """AuM-Base: width 768, 24 bidirectional Mamba blocks, 10 s clips."""
    return _create("audiomamba_base", pretrained, **kwargs)
