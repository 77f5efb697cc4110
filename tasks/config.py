"""Typed run configuration: YAML file + ``key=value`` overrides, validated on load.

Every section is a dataclass; an unknown key or a value of the wrong type is a ValueError that
names the key (``train.lr: expected float, got 'fast'``).  Free-form argument dicts
(``model.kwargs``, ``data.kwargs``) are passed on to the model / dataset, which check them.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml


@dataclass
class ModelConfig:
    name: str = "mixervit_test"                      # a name from `mmeff list models`
    kwargs: Dict[str, Any] = field(default_factory=dict)  # model arguments (mixer=, depth=, ...)
    checkpoint: Optional[str] = None                 # initial weights (local file)


@dataclass
class DataConfig:
    name: str = "shapes"                             # a built-in dataset or a folder reader
    kwargs: Dict[str, Any] = field(default_factory=dict)  # dataset arguments (root=, img_size=, ...)
    batch_size: int = 64                             # global batch (split over processes)
    eval_batch_size: int = 128
    num_workers: int = 0


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: Optional[int] = None                  # stop after this many steps (None: all epochs)
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    clip_grad: Optional[float] = 1.0
    label_smoothing: float = 0.0
    precision: str = "fp32"                          # fp32 | bf16 (autocast on CPU and CUDA)
    ema_decay: Optional[float] = None                # e.g. 0.999; evaluates the EMA weights
    aux_loss_weight: float = 1.0                     # weight of MoE auxiliary losses
    moe_bias_rate: Optional[float] = None            # aux-loss-free MoE balancing step (e.g. 1e-3)
    compile: bool = False                            # torch.compile the model
    grad_checkpointing: bool = False
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0                              # steps between validations (0: each epoch)
    checkpoint_every: int = 0                        # steps between checkpoints (0: each epoch)


@dataclass
class DistConfig:
    fsdp: bool = False                               # FSDP2 fully_shard per block instead of DDP
    backend: Optional[str] = None                    # default: nccl on CUDA, gloo on CPU


@dataclass
class RunConfig:
    task: str = "classification"
    target: str = "clip"                             # clip | frame (per-frame labels, streaming)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    output_dir: str = "runs/default"
    device: Optional[str] = None                     # default: cuda if available
    resume: bool = False                             # continue from output_dir/last checkpoint
    show_predictions: int = 8                        # test predictions printed at the end

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _check(path: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise a ValueError naming ``path``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _check(path, value, next(a for a in args if a is not type(None)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, path)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return [_check(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ValueError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kw = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ValueError(f"unknown config key {path!r}; valid keys here: {names}")
        kw[key] = _check(path, value, hints[key])
    return cls(**kw)


def _set(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {p!r} is not a section")
    node[last] = value


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> RunConfig:
    """Read ``path`` (YAML) and apply ``key=value`` overrides (values parsed as YAML scalars)."""
    tree: Dict[str, Any] = {}
    if path is not None:
        try:
            with open(path) as f:
                tree = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path!r} does not exist") from None
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path!r} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ValueError(f"config file {path!r} must hold a mapping at the top level")
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=3e-4)")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    cfg = _build(RunConfig, tree)
    if cfg.train.precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision: expected 'fp32' or 'bf16', got {cfg.train.precision!r}")
    if cfg.target not in ("clip", "frame"):
        raise ValueError(f"target: expected 'clip' or 'frame', got {cfg.target!r}")
    for key in ("data.batch_size", "data.eval_batch_size", "train.epochs"):
        sec, name = key.split(".")
        if getattr(getattr(cfg, sec), name) <= 0:
            raise ValueError(f"{key}: expected a positive int, got {getattr(getattr(cfg, sec), name)}")
    return cfg


def save_config(cfg: RunConfig, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
