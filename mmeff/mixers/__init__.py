"""Sequence mixers behind one contract (see :mod:`mmeff.mixers.base`)."""
from .base import Mixer, create_mixer, list_mixers, mixer_class, register_mixer, resolve_mixer
from .attention import Attention
from .block_sparse import BlockSparseAttention
from .mla import MultiHeadLatentAttention
from .moba import MoBA
from .neighborhood import NeighborhoodAttention
from .nsa import NativeSparseAttention
from .sliding_window import SlidingWindowAttention
from .window import WindowAttention
from .deltanet import DeltaNet
from .gated_deltanet import GatedDeltaNet

__all__ = ["Mixer", "create_mixer", "list_mixers", "mixer_class", "register_mixer", "resolve_mixer",
           "Attention", "BlockSparseAttention", "MultiHeadLatentAttention", "MoBA",
           "NeighborhoodAttention", "NativeSparseAttention", "SlidingWindowAttention", "WindowAttention",
           "DeltaNet", "GatedDeltaNet"]
