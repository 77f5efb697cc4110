"""mmeff: efficient backbones for vision, audio and video.

Every efficient sequence mixer (linear attention, linear RNNs, state-space models, sparse and full
attention, mixture-of-experts) sits behind one contract and runs on any PyTorch device.
"""
from ._registry import create_model, list_models, load_checkpoint, register_model, save_checkpoint
from .blocks import Block
from .mixers import Mixer, create_mixer, list_mixers, register_mixer
from .scans import create_scan, list_scans
from . import encoders  # noqa: F401  (registers the model families with timm)

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "load_checkpoint", "save_checkpoint", "register_model",
           "create_mixer", "list_mixers", "register_mixer", "create_scan", "list_scans", "Mixer",
           "Block", "__version__"]
