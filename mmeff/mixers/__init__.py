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
from .mamba import Mamba
from .mamba2 import Mamba2
from .ss2d import SS2D
from .mambavision import MambaVisionMixer
from .linear_attention import LinearAttention
from .retnet import MultiScaleRetention
from .gla import GatedLinearAttention
from .vig import ViGMixer
from .hgrn2 import HGRN2
from .rwkv6 import RWKV6TimeMix

__all__ = ["Mixer", "create_mixer", "list_mixers", "mixer_class", "register_mixer", "resolve_mixer",
           "Attention", "BlockSparseAttention", "MultiHeadLatentAttention", "MoBA",
           "NeighborhoodAttention", "NativeSparseAttention", "SlidingWindowAttention", "WindowAttention",
           "DeltaNet", "GatedDeltaNet", "Mamba", "Mamba2", "SS2D", "MambaVisionMixer",
           "LinearAttention", "MultiScaleRetention", "GatedLinearAttention", "HGRN2", "RWKV6TimeMix",
           "ViGMixer"]
