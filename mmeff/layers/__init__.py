"""Reusable layers: embeddings, norms, feed-forwards (timm's where they fit), MoE."""
from timm.layers import DropPath, GluMlp, LayerNorm, Mlp, RmsNorm, SwiGLU

from .conv import ShortConv
from .embed import PatchEmbed, resample_pos_embed
from .rope import RotaryEmbedding

__all__ = ["DropPath", "GluMlp", "LayerNorm", "Mlp", "RmsNorm", "SwiGLU", "ShortConv", "PatchEmbed",
           "resample_pos_embed", "RotaryEmbedding"]
