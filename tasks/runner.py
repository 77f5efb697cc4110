"""The training / evaluation loop behind ``mmeff train`` and ``mmeff eval``.

One entry point for ``python`` and ``torchrun`` (nanoGPT): under torchrun every process takes its
share of each global batch (DDP, or FSDP2 ``fully_shard`` per block with ``dist.fsdp=true``; gloo on
CPU, NCCL on GPU), so 1 and N processes with the same global batch follow the same loss curve.
Data order is a function of (seed, epoch), so ``resume`` continues exactly where a run stopped.
Checkpoints hold whole (unsharded) weights and optimizer state by parameter name
(``torch.distributed.checkpoint.state_dict``), so a run saved under FSDP2 resumes under FSDP2, DDP
or one process alike.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.utils.data import DataLoader

from mmeff._registry import load_checkpoint
from mmeff.layers.moe import MoE, collect_aux_loss, update_balance_bias

from . import checkpoint as ckpt
from .classification import TASKS
from .config import RunConfig, save_config


# ---------------------------------------------------------------------------------------- setup
class Dist:
    """Process-group facts; a single process is rank 0 of 1."""

    def __init__(self, cfg: RunConfig) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        want = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(f"cuda:{local}" if want == "cuda" and self.world > 1 else want)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            backend = cfg.dist.backend or ("nccl" if self.device.type == "cuda" else "gloo")
            dist.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).item()

    def gather(self, obj: Any) -> List[Any]:
        if self.world == 1:
            return [obj]
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class StepBatches:
    """Batch sampler: the global batch of step ``s`` is a slice of a (seed, epoch) permutation; each
    rank takes every ``world``-th index of it.  ``start`` skips the batches already consumed."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int, epoch: int,
                 start: int = 0, shuffle: bool = True, drop_last: bool = True) -> None:
        if global_batch % world:
            raise ValueError(f"data.batch_size ({global_batch}) must be divisible by the number of "
                             f"processes ({world})")
        self.n, self.gb, self.rank, self.world = n, global_batch, rank, world
        self.seed, self.epoch, self.start, self.shuffle = seed, epoch, start, shuffle
        self.steps = n // global_batch if drop_last else math.ceil(n / global_batch)

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[List[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for s in range(self.start, self.steps):
            yield order[s * self.gb:(s + 1) * self.gb][self.rank::self.world]


def _seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _loader(ds, sampler: StepBatches, workers: int) -> DataLoader:
    # a private generator: making a loader must not draw from the global RNG (exact resume)
    return DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                      generator=torch.Generator().manual_seed(sampler.seed * 7919 + sampler.epoch))


def _autocast(cfg: RunConfig, device: torch.device):
    if cfg.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _wrap(model: nn.Module, cfg: RunConfig, d: Dist) -> nn.Module:
    if d.world == 1:
        return model
    if cfg.dist.fsdp:
        from torch.distributed.fsdp import fully_shard
        for blk in getattr(model, "blocks", []):
            fully_shard(blk)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)      # DDP


_FULL = StateDictOptions(full_state_dict=True)  # whole tensors under FSDP2, plain names under DDP


def _full_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The unsharded weights (every rank takes part in gathering FSDP2 shards)."""
    return get_model_state_dict(_unwrap(model), options=_FULL)


class _StateView(nn.Module):
    """A module-like holder so checkpoint.save can write a plain (unsharded) state dict."""

    def __init__(self, sd: Dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._sd = sd

    def state_dict(self, *a, **k):  # noqa: D102
        return self._sd


def _lr_at(step: int, total: int, cfg: RunConfig) -> float:
    t = cfg.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    p = (step - t.warmup_steps) / max(1, total - t.warmup_steps)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(1.0, p)))


# -------------------------------------------------------------------------------------- helpers
def _datasets(cfg: RunConfig, splits):
    from .data import build_dataset
    return {s: build_dataset(cfg.data.name, s, **cfg.data.kwargs) for s in splits}


@torch.no_grad()
def evaluate_split(model: nn.Module, ds, task, cfg: RunConfig, d: Dist) -> Dict[str, Any]:
    """Loss and metrics of ``model`` on ``ds`` (all processes share the work)."""
    model.eval()
    sampler = StepBatches(len(ds), cfg.data.eval_batch_size * d.world, d.rank, d.world, 0, 0,
                          shuffle=False, drop_last=False)
    logits, labels = [], []
    for batch in _loader(ds, sampler, cfg.data.num_workers):
        with _autocast(cfg, d.device):
            out = model(batch["input"].to(d.device))
        logits.append(out.float().cpu())
        labels.append(task.labels(batch))
    parts = d.gather((torch.cat(logits), torch.cat(labels)) if logits else None)
    parts = [p for p in parts if p is not None]
    all_logits, all_labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    model.train()
    res = {"loss": task.loss(all_logits, all_labels).item(), **task.metrics(all_logits, all_labels)}
    res["_logits"] = all_logits
    return res


class _Log:
    """Metrics to ``metrics.jsonl`` (rank 0) and the curves to ``curves.png`` at the end."""

    def __init__(self, path: str, enabled: bool, append: bool) -> None:
        self.path, self.enabled = path, enabled
        if enabled and not append and os.path.exists(path):
            os.remove(path)

    def write(self, **rec: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


def plot_curves(jsonl: str, png: str) -> None:
    """Train loss and validation metrics against step, from a metrics.jsonl file."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(line) for line in open(jsonl)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    tr = [r for r in recs if r["split"] == "train"]
    va = [r for r in recs if r["split"] == "val"]
    axes[0].plot([r["step"] for r in tr], [r["loss"] for r in tr], label="train")
    axes[0].plot([r["step"] for r in va], [r["loss"] for r in va], "o-", label="val")
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[0].legend()
    for key in ("top1", "top5", "mAP"):
        if va and key in va[0]:
            axes[1].plot([r["step"] for r in va], [r[key] for r in va], "o-", label=f"val {key}")
    axes[1].set(xlabel="step", title="validation metrics", ylim=(0, 1))
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------ training
def train(cfg: RunConfig) -> Dict[str, Any]:
    """Train as ``cfg`` says; return the final test metrics (rank 0's view)."""
    from tqdm import tqdm
    d = Dist(cfg)
    try:
        _seed_all(cfg.train.seed)
        task = TASKS[cfg.task](cfg.target, cfg.train.label_smoothing)
        data = _datasets(cfg, ("train", "val", "test"))
        model = task.build_model(cfg.model.name, data["train"], **cfg.model.kwargs)
        if cfg.model.checkpoint:
            load_checkpoint(model, cfg.model.checkpoint)
        if cfg.train.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(d.device)
        ema = None
        if cfg.train.ema_decay:
            from timm.utils import ModelEmaV3
            ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
        net = _wrap(model, cfg, d)
        if cfg.train.compile:
            net = torch.compile(net)
        decay, no_decay = [], []
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
        for n, p in net.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or _unwrap_name(n) in skip else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.train.lr, betas=tuple(cfg.train.betas))

        spe = len(data["train"]) // cfg.data.batch_size
        if spe == 0:
            raise ValueError(f"data.batch_size ({cfg.data.batch_size}) is larger than the training "
                             f"set ({len(data['train'])} samples)")
        total = cfg.train.epochs * spe
        stop = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
        step = 0
        if cfg.resume and (last := ckpt.latest(cfg.output_dir)) is not None:
            state = ckpt.load(last)
            set_model_state_dict(_unwrap(net), state["model"], options=_FULL)
            if ema is not None and state["ema"] is not None:
                ema.module.load_state_dict(state["ema"])
            set_optimizer_state_dict(_unwrap(net), opt, state["trainer"]["optimizer"], options=_FULL)
            step = state["trainer"]["step"]
            ckpt.set_rng_state(state["trainer"]["rng"])
            if d.main:
                print(f"resumed from {last} at step {step}")
        if d.main:
            os.makedirs(cfg.output_dir, exist_ok=True)
            save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
        log = _Log(os.path.join(cfg.output_dir, "metrics.jsonl"), d.main, append=step > 0)
        eval_every = cfg.train.eval_every or spe
        ckpt_every = cfg.train.checkpoint_every or spe
        n_params = sum(p.numel() for p in model.parameters())
        has_moe = any(isinstance(m, MoE) for m in model.modules())
        if d.main:
            print(f"{cfg.model.name}: {n_params / 1e6:.2f}M params | {len(data['train'])} train samples | "
                  f"{stop} steps of global batch {cfg.data.batch_size} on {d.world} x {d.device}")

        net.train()
        bar = tqdm(total=stop, initial=step, disable=not d.main, dynamic_ncols=True, desc="train")
        t_last, seen = time.perf_counter(), 0
        while step < stop:
            epoch, pos = divmod(step, spe)
            sampler = StepBatches(len(data["train"]), cfg.data.batch_size, d.rank, d.world,
                                  cfg.train.seed, epoch, start=pos)
            for batch in _loader(data["train"], sampler, cfg.data.num_workers):
                lr = _lr_at(step, total, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                x, y = batch["input"].to(d.device), task.labels(batch).to(d.device)
                with _autocast(cfg, d.device):
                    loss = task.loss(net(x), y)
                    aux = collect_aux_loss(net) if has_moe else None
                    total_loss = loss + cfg.train.aux_loss_weight * aux if has_moe else loss
                opt.zero_grad(set_to_none=True)
                total_loss.backward()
                gnorm = (nn.utils.clip_grad_norm_(net.parameters(), cfg.train.clip_grad).item()
                         if cfg.train.clip_grad else float("nan"))
                opt.step()
                if has_moe and cfg.train.moe_bias_rate:
                    update_balance_bias(model, cfg.train.moe_bias_rate)
                if ema is not None:
                    ema.update(model, step=step)
                step += 1
                seen += x.shape[0] * d.world
                loss_v = d.mean(loss.item())
                if step % cfg.train.log_every == 0 or step == stop:
                    dt = time.perf_counter() - t_last
                    rec = dict(split="train", step=step, epoch=epoch, loss=loss_v, lr=lr,
                               grad_norm=gnorm, samples_per_s=seen / max(dt, 1e-9))
                    if has_moe:
                        stats = [m.load_stats() for m in model.modules() if isinstance(m, MoE)]
                        rec["aux_loss"] = d.mean(aux.item())
                        rec["moe_imbalance"] = sum(st["imbalance"] for st in stats) / len(stats)
                    log.write(**rec)
                    t_last, seen = time.perf_counter(), 0
                bar.set_postfix(loss=f"{loss_v:.3f}", lr=f"{lr:.1e}")
                bar.update(1)
                eval_model = ema.module if ema is not None else net
                if step % eval_every == 0 or step == stop:
                    res = evaluate_split(eval_model, data["val"], task, cfg, d)
                    res.pop("_logits")
                    log.write(split="val", step=step, epoch=epoch, **res)
                    if d.main:
                        bar.write(f"step {step}: val " + " ".join(f"{k} {v:.4f}" for k, v in res.items()))
                if step % ckpt_every == 0 or step == stop:
                    sd = _full_state(net)
                    osd = get_optimizer_state_dict(_unwrap(net), opt, options=_FULL)
                    if d.main:
                        ckpt.save(cfg.output_dir, step, _StateView(sd),
                                  {"optimizer": osd, "epoch": epoch},
                                  ema=ema.module if ema is not None else None)
                if step >= stop:
                    break
        bar.close()

        eval_model = ema.module if ema is not None else net
        test = evaluate_split(eval_model, data["test"], task, cfg, d)
        logits = test.pop("_logits")
        log.write(split="test", step=step, **test)
        if d.main:
            plot_curves(log.path, os.path.join(cfg.output_dir, "curves.png"))
            _report(test, logits, data["test"], task, cfg)
        return test
    finally:
        d.close()


def _unwrap_name(name: str) -> str:
    for prefix in ("_orig_mod.", "module."):
        name = name[len(prefix):] if name.startswith(prefix) else name
    return name


def _report(test: Dict[str, Any], logits: torch.Tensor, ds, task, cfg: RunConfig) -> None:
    print("test " + " ".join(f"{k} {v:.4f}" for k, v in test.items()))
    k = min(cfg.show_predictions, len(ds))
    if k:
        print(f"sample of test predictions ({k}):")
        for i, (cls, conf) in enumerate(task.predictions(logits, k)):
            item = ds[i]
            truth = item["label"]
            truth = ds.classes[truth] if isinstance(truth, int) else "multi-label"
            print(f"  [{'ok' if ds.classes[cls] == truth else 'xx'}] predicted {ds.classes[cls]:<10} "
                  f"({conf:.2f})  true {truth:<10}  {item.get('caption', '')}")
    print(f"metrics: {os.path.join(cfg.output_dir, 'metrics.jsonl')}  "
          f"curves: {os.path.join(cfg.output_dir, 'curves.png')}  "
          f"checkpoint: {ckpt.latest(cfg.output_dir)}")


def evaluate(cfg: RunConfig, checkpoint: str, split: str = "test") -> Dict[str, Any]:
    """Metrics of a trained checkpoint (a run directory, a checkpoint directory or a weights file)."""
    d = Dist(cfg)
    try:
        task = TASKS[cfg.task](cfg.target, cfg.train.label_smoothing)
        ds = _datasets(cfg, (split,))[split]
        model = task.build_model(cfg.model.name, ds, **cfg.model.kwargs)
        path = checkpoint
        if os.path.isdir(path):
            path = ckpt.latest(path) or path
            path = os.path.join(path, "model.safetensors")
        load_checkpoint(model, path)
        res = evaluate_split(model.to(d.device), ds, task, cfg, d)
        res.pop("_logits")
        if d.main:
            print(f"{split} " + " ".join(f"{k} {v:.4f}" for k, v in res.items()))
        return res
    finally:
        d.close()
