"""Reusable layers: embeddings, norms, feed-forwards (timm's where they fit), MoE."""
from timm.layers import DropPath, GluMlp, LayerNorm, Mlp, RmsNorm, SwiGLU

from .conv import ShortConv
from .embed import PatchEmbed, resample_pos_embed
from .moe import MoE, collect_aux_loss, moe_naive, update_balance_bias
from .rope import RotaryEmbedding

__all__ = ["DropPath", "GluMlp", "LayerNorm", "Mlp", "RmsNorm", "SwiGLU", "ShortConv", "PatchEmbed",
           "resample_pos_embed", "RotaryEmbedding", "MoE", "collect_aux_loss", "moe_naive",
           "update_balance_bias"]
