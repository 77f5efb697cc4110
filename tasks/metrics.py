"""Classification metrics: top-k accuracy (single label) and mean average precision (multi-label)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Fraction of rows whose target is among the k highest logits, for each k (k capped at C)."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, C] and target [N], got {tuple(logits.shape)} and {tuple(target.shape)}")
    out = {}
    for k in ks:
        kk = min(k, logits.shape[1])
        top = logits.topk(kk, dim=1).indices
        out[f"top{k}"] = (top == target[:, None]).any(dim=1).float().mean().item()
    return out


def average_precision(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AP per class from scores [N, C] and binary targets [N, C]; NaN for classes with no positive."""
    order = scores.argsort(dim=0, descending=True)
    t = target.gather(0, order).float()                    # targets ranked by score, per class
    hits = t.cumsum(0)
    precision = hits / torch.arange(1, t.shape[0] + 1, device=t.device)[:, None]
    npos = t.sum(0)
    ap = (precision * t).sum(0) / npos
    return torch.where(npos > 0, ap, torch.full_like(ap, float("nan")))


def mean_average_precision(scores: torch.Tensor, target: torch.Tensor) -> float:
    """mAP over the classes that have at least one positive (AudioSet-style)."""
    ap = average_precision(scores, target)
    return ap[~ap.isnan()].mean().item()
