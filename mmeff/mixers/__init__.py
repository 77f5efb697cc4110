"""Sequence mixers behind one contract (see :mod:`mmeff.mixers.base`)."""
from .base import Mixer, create_mixer, list_mixers, mixer_class, register_mixer, resolve_mixer
from .attention import Attention

__all__ = ["Mixer", "create_mixer", "list_mixers", "mixer_class", "register_mixer", "resolve_mixer",
           "Attention"]
