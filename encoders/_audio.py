"""Shared pieces of the audio encoder families (AudioMamba, the streaming encoders).

Audio models take a mono waveform ``[B, samples]`` or ``[B, 1, samples]`` and describe it in their
pretrained cfg as ``input_size = (1, samples)``.  timm's builder asserts a 3-long ``(C, H, W)``
``input_size`` while building, so audio cfgs register none and :func:`set_waveform_input` fills it
in on the built model.
"""
from __future__ import annotations

from typing import Any, Dict

from torch import nn


def audio_cfg(first_conv: str, **kw) -> Dict[str, Any]:
    """Default pretrained cfg of an mmeff audio model (AudioSet's 527 classes, no weights)."""
    return {**dict(num_classes=527, input_size=None, pool_size=None, first_conv=first_conv,
                   classifier="head", license="apache-2.0",
                   notes="input: mono waveform [B, samples] or [B, 1, samples]"), **kw}


def set_waveform_input(model: nn.Module, samples: int) -> nn.Module:
    """Record ``input_size = (1, samples)`` (a mono waveform) in ``model.pretrained_cfg``."""
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (1, samples)}
    model.default_cfg = model.pretrained_cfg
    return model
