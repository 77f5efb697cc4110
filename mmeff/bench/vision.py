"""``mmeff bench vision``: inference throughput and peak memory of the vision SSMs against DeiT-Ti and
Swin-T, measured in the same run.

Models: ``vim_tiny_patch16_224``, ``vmamba_tiny`` and ``plainmamba_l1`` (mmeff), timm's
``vit_tiny_patch16_224`` (DeiT-Ti geometry, attention through SDPA) and
``swin_tiny_patch4_window7_224``; the timm models are built with ``img_size`` set to each size
(Swin keeps its 7x7 windows: timm pads a grid the window does not divide).  The mmeff isotropic
models are built for each size too (no position-table resampling in the timed call).

Sizes: ``cfg.lengths`` read as image sizes (default 224, 512, 1024 on GPU; 224, 512 on CPU;
``quick``: 64 and 128 with tiny models of the same five families).  Batch: ``cfg.tokens`` 16x16
patches per batch (default 32768 on GPU, 2048 on CPU, 128 quick), so the batch shrinks as the image
grows.  Forward only, no grad, eval mode; bf16 autocast on CUDA (``cfg.dtype`` fp16 picks fp16;
on CPU autocast only when ``cfg.dtype`` is not fp32).  Each row gives ms per batch, images per
second (``img_per_s``, in the JSON) and time and memory ratios against both baselines.
"""
from __future__ import annotations

import contextlib
import gc
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Tuple

import timm
import torch

from .. import create_model
from . import BenchConfig, make_rows, measure, register_suite
from .harness import Measurement, Row

BASELINES = ("deit_tiny", "swin_tiny")

# label -> (factory(size) -> model); full sizes, then the quick (tiny) stand-ins of the same families
MODELS: Dict[str, Callable[[int], torch.nn.Module]] = {
    "vim_tiny": lambda s: create_model("vim_tiny_patch16_224", img_size=s),
    "vmamba_tiny": lambda s: create_model("vmamba_tiny"),
    "plainmamba_l1": lambda s: create_model("plainmamba_l1", img_size=s),
    "deit_tiny": lambda s: timm.create_model("vit_tiny_patch16_224", img_size=s),
    "swin_tiny": lambda s: timm.create_model("swin_tiny_patch4_window7_224", img_size=s),
}
QUICK_MODELS: Dict[str, Callable[[int], torch.nn.Module]] = {
    "vim_test": lambda s: create_model("vim_test", img_size=s),
    "vmamba_test": lambda s: create_model("vmamba_test"),
    "plainmamba_test": lambda s: create_model("plainmamba_test", img_size=s),
    "deit_tiny": lambda s: timm.create_model("vit_tiny_patch16_224", img_size=s, embed_dim=32, depth=2,
                                             num_heads=2),
    "swin_tiny": lambda s: timm.create_model("swin_tiny_patch4_window7_224", img_size=s, embed_dim=16,
                                             depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
}


@dataclass
class ImageRow(Row):
    """A :class:`~mmeff.bench.harness.Row` with the throughput in images per second."""
    img_per_s: float = 0.0


def _settings(cfg: BenchConfig) -> Tuple[Tuple[int, ...], int, Dict[str, Callable]]:
    cuda = cfg.device.type == "cuda"
    if cfg.quick:
        return tuple(cfg.lengths or (64, 128)), cfg.tokens or 128, QUICK_MODELS
    sizes = cfg.lengths or ((224, 512, 1024) if cuda else (224, 512))
    return tuple(sizes), cfg.tokens or (32768 if cuda else 2048), MODELS


def _autocast(cfg: BenchConfig):
    if cfg.device.type == "cuda":
        dtype = torch.float16 if cfg.dtype == torch.float16 else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)
    if cfg.dtype != torch.float32:
        return torch.autocast("cpu", dtype=cfg.dtype)
    return contextlib.nullcontext()


def _measure(model: torch.nn.Module, x: torch.Tensor, cfg: BenchConfig) -> Measurement:
    def run():
        with torch.no_grad(), _autocast(cfg):
            model(x)
    return measure(run, cfg.device, warmup=cfg.warmup, repeat=cfg.repeat, max_seconds=30)


@register_suite("vision")
def run(cfg: BenchConfig) -> List[Row]:
    sizes, tokens, models = _settings(cfg)
    rows: List[Row] = []
    for size in sizes:
        if size % 32:
            raise ValueError(f"image sizes must be divisible by 32 (VMamba's stride), got {size}")
        batch = max(1, tokens // (size // 16) ** 2)
        x = torch.randn(batch, 3, size, size, device=cfg.device)
        res: Dict[str, Measurement] = {}
        for label, factory in models.items():
            model = factory(size).to(cfg.device).eval()
            try:
                res[label] = _measure(model, x, cfg)
            except torch.cuda.OutOfMemoryError:
                warnings.warn(f"vision bench: {label} ran out of memory at {size}px, batch {batch}")
            del model
            gc.collect()
            if cfg.device.type == "cuda":
                torch.cuda.empty_cache()
        case = f"{size}px B={batch}"
        rows += [ImageRow(**asdict(r), img_per_s=batch * 1e3 / r.ms)
                 for r in make_rows("vision", case, res, baselines=BASELINES)]
    return rows
