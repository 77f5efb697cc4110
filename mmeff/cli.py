"""The ``mmeff`` command: ``list``, ``info MODEL``, ``train CONFIG``, ``eval CONFIG``, ``stream [INPUT]``,
``bench SUITE``.

Each subcommand is a small function; ``mmeff <cmd> --help`` documents its options.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cmd_list(args: argparse.Namespace) -> int:
    import mmeff
    from mmeff.bench import list_suites
    groups = {"models": mmeff.list_models, "mixers": mmeff.list_mixers, "bench suites": list_suites}
    for what, fn in groups.items():
        if args.what in (None, what.split()[0]):
            names = fn(args.pattern)
            print(f"{what} ({len(names)}):")
            for n in names:
                print(f"  {n}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import mmeff
    kw = {}
    if args.mixer:
        kw["mixer"] = args.mixer
    model = mmeff.create_model(args.model, **kw).eval()
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.pretrained_cfg
    size = args.size or cfg["input_size"][1:]
    x = torch.randn(args.batch, cfg["input_size"][0], *size)
    t0 = time.perf_counter()
    with torch.no_grad():
        y = model(x)
    dt = time.perf_counter() - t0
    print(f"{args.model}: {type(model).__name__}, {n_params / 1e6:.2f}M parameters")
    print(f"forward {tuple(x.shape)} -> {tuple(y.shape)} in {dt * 1e3:.1f} ms on CPU "
          f"({torch.get_num_threads()} threads)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from mmeff.bench import BenchConfig, format_table, run_suite, suite_threads, write_json
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = BenchConfig(device=device, dtype=DTYPES[args.dtype], quick=args.quick,
                      lengths=args.lengths, tokens=args.tokens, backward=not args.no_backward,
                      repeat=args.repeat, warmup=args.warmup)
    rows = run_suite(args.suite, cfg)
    threads = suite_threads(args.suite)
    print(f"mmeff bench {args.suite} on {device} ({threads} thread{'s' * (threads > 1)}, {args.dtype})")
    print(format_table(rows))
    if args.json:
        write_json(args.json, args.suite, rows, device, threads)
        print(f"wrote {args.json}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mmeff.tasks.config import load_config
    from mmeff.tasks.runner import train
    cfg = load_config(args.config, args.overrides + (["resume=true"] if args.resume else []))
    train(cfg)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmeff.tasks.config import load_config
    from mmeff.tasks.runner import evaluate
    evaluate(load_config(args.config, args.overrides), args.checkpoint, args.split)
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from mmeff.tasks.stream import run
    return run(args)


def _ints(s: str) -> List[int]:
    try:
        return [int(v) for v in s.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmeff", description="Efficient backbones for vision, audio and video.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="list models, mixers and benchmark suites")
    s.add_argument("what", nargs="?", choices=["models", "mixers", "bench"], help="only this group")
    s.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'vim*'")
    s.set_defaults(fn=_cmd_list)

    s = sub.add_parser("info", help="build a model, count parameters, run one forward pass on CPU")
    s.add_argument("model", help="a name from `mmeff list models`")
    s.add_argument("--mixer", help="override the model's mixer (any `mmeff list mixers` name)")
    s.add_argument("--size", type=_ints, help="input H,W (default: the model's pretrained_cfg)")
    s.add_argument("--batch", type=int, default=1)
    s.set_defaults(fn=_cmd_info)

    s = sub.add_parser("train", help="train a model from a YAML config (works under torchrun too)")
    s.add_argument("config", help="YAML file, e.g. configs/quickstart.yaml")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 data.batch_size=32")
    s.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    s.set_defaults(fn=_cmd_train)

    s = sub.add_parser("eval", help="evaluate a checkpoint on a split of the config's data")
    s.add_argument("config", help="the YAML config the model was trained with")
    s.add_argument("overrides", nargs="*", help="key=value overrides")
    s.add_argument("--checkpoint", required=True,
                   help="a run directory, a checkpoint directory or a .safetensors/.pth file")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.set_defaults(fn=_cmd_eval)

    from mmeff.tasks.stream import add_arguments
    s = sub.add_parser("stream", help="detect sound events in a WAV file, stdin PCM or a demo signal, "
                                      "streaming chunk by chunk")
    add_arguments(s)
    s.set_defaults(fn=_cmd_stream)

    from mmeff.bench import list_suites
    s = sub.add_parser("bench", help="run a benchmark suite (ratios against a same-run baseline)")
    s.add_argument("suite", choices=list_suites())
    s.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    s.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    s.add_argument("--lengths", type=_ints, help="sequence lengths, e.g. 1024,4096,16384")
    s.add_argument("--tokens", type=int, help="B*T kept constant across lengths")
    s.add_argument("--threads", type=int, help="torch CPU threads")
    s.add_argument("--repeat", type=int, default=5, help="timed repeats (median reported)")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--no-backward", action="store_true", help="forward only")
    s.add_argument("--quick", action="store_true", help="smallest settings (smoke test)")
    s.add_argument("--json", help="also write the rows to this JSON file")
    s.set_defaults(fn=_cmd_bench)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"mmeff {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
