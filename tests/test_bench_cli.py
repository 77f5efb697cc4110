"""Benchmark harness and the ``mmeff`` command line."""
import json
import subprocess
import sys
import time

import pytest
import torch

from mmeff.bench import (BenchConfig, format_table, make_rows, measure, measure_all, peak_memory,
                         register_suite, run_suite, suite_threads, write_json)
from mmeff.bench import _SUITE_THREADS, _SUITES, SUITE_MODULES
from mmeff.cli import main


def test_measure_and_ratios():
    fast = measure(lambda: time.sleep(0.001), "cpu", warmup=1, repeat=3)
    slow = measure(lambda: time.sleep(0.05), "cpu", warmup=1, repeat=3)
    assert 1 <= fast.ms < slow.ms and slow.ms >= 50 and fast.repeat == 3
    rows = make_rows("demo", "matmul", {"fast": fast, "slow": slow}, baselines=["slow"])
    by = {r.impl: r for r in rows}
    assert by["fast"].speedup["slow"] == pytest.approx(slow.ms / fast.ms)
    assert by["slow"].speedup == {}
    table = format_table(rows)
    assert "vs slow" in table and "baseline" in table
    with pytest.raises(ValueError, match="baselines"):
        make_rows("demo", "x", {"fast": fast}, baselines=["nope"])


def test_measure_all_interleaves_and_honours_overrides():
    """Timed calls alternate between implementations (a speed drift hits all alike), in an order
    rotated each round; per-name overrides set warm-up, repeats and a time budget."""
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
           "slow": lambda: (calls.append("slow"), time.sleep(0.03))}
    res = measure_all(fns, "cpu", warmup=1, repeat=4, overrides={"slow": {"warmup": 0, "max_seconds": 0.05}})
    # warm-ups, then rounds a b slow | b slow a | a b | b a (slow stops after its budget), then
    # the one peak-memory call of each
    assert calls == (["a", "b"] + ["a", "b", "slow"] + ["b", "slow", "a"] + ["a", "b"] + ["b", "a"]
                     + ["a", "b", "slow"])
    assert [res[n].repeat for n in ("a", "b", "slow")] == [4, 4, 2]
    assert res["slow"].ms >= 30 > res["a"].ms


def test_cpu_peak_memory_sees_a_large_allocation():
    n = 64 * 2**20  # 256 MiB of fp32, touched so it is resident
    peak = peak_memory(lambda: torch.ones(n).sum(), "cpu")
    assert peak > 200 * 2**20


def test_json_output(tmp_path):
    m = measure(lambda: None, "cpu", warmup=0, repeat=2)
    rows = make_rows("demo", "noop", {"a": m, "b": m}, baselines=["b"])
    path = tmp_path / "out.json"
    write_json(str(path), "demo", rows, torch.device("cpu"))
    data = json.loads(path.read_text())
    assert data["suite"] == "demo" and data["environment"]["device"] == "cpu"
    assert {r["impl"] for r in data["rows"]} == {"a", "b"}


def test_suite_with_fixed_threads_runs_on_them_and_restores(monkeypatch, tmp_path):
    """A suite registered with ``threads`` runs on that many threads (the JSON says so), whatever
    torch's setting, which comes back afterwards."""
    seen = []
    monkeypatch.setitem(SUITE_MODULES, "one_thread_demo", "harness")
    register_suite("one_thread_demo", threads=1)(lambda cfg: seen.append(torch.get_num_threads()) or [])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_suite("one_thread_demo", BenchConfig(device=torch.device("cpu"))) == []
        assert seen == [1] and torch.get_num_threads() == 2
        assert suite_threads("one_thread_demo") == 1 and suite_threads("moe") == 2
        write_json(str(tmp_path / "t.json"), "one_thread_demo", [], torch.device("cpu"), 1)
        assert json.loads((tmp_path / "t.json").read_text())["environment"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
        _SUITES.pop("one_thread_demo"), _SUITE_THREADS.pop("one_thread_demo")


def test_cli_list_and_info(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "mixervit_test" in out and "mixers (" not in out
    assert main(["info", "mixervit_test"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert main(["info", "no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_cli_help_for_every_subcommand():
    for cmd in ("list", "info", "bench"):
        r = subprocess.run([sys.executable, "-m", "mmeff.cli", cmd, "--help"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage: mmeff" in r.stdout
