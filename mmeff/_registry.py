"""Model factory on timm's own registry.

mmeff models register with ``timm.models.register_model`` (through :func:`register_model`, which
also remembers that the name is ours), so ``timm.create_model(name)`` works after ``import mmeff``
and :func:`create_model` returns the same kind of object.  Nothing here touches the network:
``pretrained=True`` needs a local file, ``checkpoint_path=`` loads a local ``.safetensors`` or
``.pth`` (``torch.load(weights_only=True)``) through the model's ``checkpoint_filter_fn``.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Dict, List, Optional, Set

import timm
import torch
from timm.models import build_model_with_cfg, load_state_dict
from timm.models import register_model as _timm_register_model
from torch import nn

from ._utils import match, unknown_name_error

_MODELS: Set[str] = set()

# keyword arguments timm's builder consumes itself (not passed to the model class)
_BUILDER_KWARGS = {"features_only", "out_indices", "feature_cls", "output_stride", "feature_cfg",
                   "pretrained_strict", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir",
                   "pretrained_model_args", "flatten_sequential", "norm", "output_fmt"}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an mmeff model entrypoint in timm's registry (and in mmeff's list)."""
    _MODELS.add(fn.__name__)
    return _timm_register_model(fn)


def list_models(pattern: str = "*") -> List[str]:
    """Names of every registered mmeff model matching ``pattern`` (all are in ``timm.list_models()``)."""
    return match(_MODELS, pattern)


def build_model(cls: type, variant: str, pretrained: bool = False,
                feature_cfg: Optional[Dict[str, Any]] = None, **kwargs: Any) -> nn.Module:
    """Build ``cls`` for ``variant`` through timm's builder, after checking every keyword.

    Used by every ``@register_model`` entrypoint. An unknown keyword is a ValueError listing the
    valid ones; ``pretrained=True`` without a local weights file in the pretrained cfg is an error
    (mmeff never downloads).
    """
    params = inspect.signature(cls.__init__).parameters
    valid = {p for p in params if p != "self"} | _BUILDER_KWARGS
    bad = sorted(k for k in kwargs if k not in valid)
    if bad:
        raise ValueError(f"{variant}: unknown argument(s) {bad}; valid model arguments: "
                         f"{sorted(p for p in params if p != 'self')}")
    if pretrained:
        overlay = kwargs.get("pretrained_cfg_overlay") or {}
        if not overlay.get("file"):
            raise ValueError(
                f"{variant}: mmeff ships no pretrained weights and never downloads; pass "
                f"checkpoint_path='weights.safetensors' (or pretrained_cfg_overlay=dict(file=...)")
        if not os.path.isfile(overlay["file"]):
            raise FileNotFoundError(f"{variant}: pretrained file {overlay['file']!r} does not exist")
    return build_model_with_cfg(
        cls, variant, pretrained,
        pretrained_filter_fn=getattr(cls, "checkpoint_filter_fn", None),
        feature_cfg=feature_cfg or dict(feature_cls="getter"),
        **kwargs)


def load_checkpoint(model: nn.Module, checkpoint_path: str, strict: bool = True) -> nn.Module:
    """Load a local ``.safetensors`` / ``.pth`` / ``.pt`` weights file into ``model`` (in place).

    The state dict passes through the model class's ``checkpoint_filter_fn`` (if any). Keys that do
    not fit are a ValueError naming them.
    """
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint_path {path!r} does not exist or is not a file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"checkpoint_path must end in .safetensors, .pth, .pt or .bin, got {path!r}")
    try:
        state = load_state_dict(path, use_ema=True, device="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, truncated safetensors
        raise ValueError(f"could not read checkpoint {path!r}: {type(e).__name__}: {e}") from e
    filter_fn = getattr(type(model), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape_bad = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if strict and (missing or unexpected or shape_bad):
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {what} key(s) {keys[:8]}")
        if shape_bad:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                for k in shape_bad[:8]))
        raise ValueError(f"checkpoint {path!r} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k not in shape_bad}, strict=strict)
    return model


def create_model(name: str, pretrained: bool = False, checkpoint_path: Optional[str] = None,
                 **kwargs: Any) -> nn.Module:
    """Create a registered mmeff model by name (the same object ``timm.create_model`` returns).

    Args:
        name: a name from :func:`list_models`.
        pretrained: load the local file named by ``pretrained_cfg_overlay=dict(file=...)``.
        checkpoint_path: a local ``.safetensors`` / ``.pth`` to load after building.
        **kwargs: model arguments (``num_classes``, ``img_size``, ``mixer``, ``scan``, ...).
    """
    if name not in _MODELS:
        raise unknown_name_error("model", name, _MODELS)
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model


def save_checkpoint(model: nn.Module, path: str) -> None:
    """Write ``model``'s weights to ``path`` (``.safetensors``, else ``torch.save``), atomically."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, tmp)
    else:
        torch.save(state, tmp)
    os.replace(tmp, path)
