"""Audio: the streaming front end, the streaming encoders and their runtime, AudioMamba, ``mmeff stream``,
and the audio training configs."""
import io
import os
import resource
import struct
import subprocess
import sys

import pytest
import torch
import torchaudio

import mmeff
from mmeff.cli import main
from mmeff.layers.audio import AudioFrontend, StreamingResampler
from mmeff.tasks.data import write_wav
from mmeff.tasks.stream import stdin_source
from mmeff.testing import assert_close, random_splits, run_in_chunks

STREAM_TEST = ["stream_mamba_test", "stream_mamba2_test", "stream_gdn_test"]
TOKEN = 640  # samples per token of the streaming models (4 frames of 10 ms at 16 kHz)


def _wave(batch=2, samples=8000, seed=0):
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- front end
@pytest.mark.parametrize("features", ["logmel", "fbank"])
def test_frontend_streaming_equals_offline(features):
    fe = AudioFrontend(features=features, n_mels=40).eval()
    x = _wave(samples=4000)
    full = fe(x)
    assert full.shape == (2, 4000 // 160, 40)
    gen = torch.Generator().manual_seed(1)
    for splits in ([160] * 25, [1] * 7 + [3993], [4000], random_splits(4000, gen, 9),
                   random_splits(4000, gen, 30)):
        y, state = run_in_chunks(fe.step, x, fe.init_state(2), splits)
        assert_close(f"{features} {splits[:4]}", y, full, 1e-5)
        assert state["wave"].shape[1] == fe.win - fe.hop + 4000 % 160


def test_logmel_equals_torchaudio_transform():
    """The log-mel is torchaudio's MelSpectrogram (its window and filterbank), computed traceably."""
    fe = AudioFrontend(features="logmel", n_mels=40, norm_mean=0.0, norm_std=1.0).eval()
    x = torch.nn.functional.pad(_wave(samples=4000), (fe.win - fe.hop, 0))
    ref = torch.log(fe.mel(x) + 1e-6).transpose(1, 2)
    assert_close("logmel", fe(_wave(samples=4000)), ref, 1e-6)


def test_frontend_normalisation_and_spec_augment():
    fe = AudioFrontend(n_mels=40, freq_mask=8, time_mask=5)
    x = _wave(samples=4000)
    fe.eval()
    a, b = fe(x), fe(x)
    assert torch.equal(a, b)                          # no masks in eval
    fe.train()
    masked = fe(x)
    assert (masked == 0).any() and not torch.equal(masked, a)
    y, _ = fe.step(x, fe.init_state(2))              # streaming never masks, even in training mode
    assert_close("step in train mode", y, a, 1e-6)
    mean, std = fe.fit_normalization([x[0], x[1]])
    assert abs(fe.eval()(x).mean().item()) < 1e-3 and abs(fe(x).std().item() - 1) < 1e-2
    assert (fe.norm_mean.item(), fe.norm_std.item()) == pytest.approx((mean, std))
    with pytest.raises(ValueError, match="mono"):
        fe(torch.randn(2, 2, 4000))
    with pytest.raises(ValueError, match="features"):
        AudioFrontend(features="mfcc")


@pytest.mark.parametrize("rates", [(8000, 16000), (44100, 16000), (16000, 16000)])
def test_streaming_resampler_equals_offline(rates):
    r = StreamingResampler(*rates)
    x = _wave(batch=1, samples=rates[0] // 5 + 13)
    ref = torchaudio.functional.resample(x, *rates)
    y, state = run_in_chunks(r.step, x, r.init_state(1), random_splits(x.shape[1], torch.Generator().manual_seed(2), 7))
    y = torch.cat([y, r.flush(state)], dim=1)
    assert_close(f"resample {rates}", y, ref, 1e-5)


# ------------------------------------------------------------------------ streaming encoders
@pytest.mark.parametrize("name", STREAM_TEST)
def test_stream_step_equals_offline(name):
    model = mmeff.create_model(name, num_classes=6).eval()
    x = _wave(samples=6400)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        full = model.forward_frames(x)
        assert full.shape == (2, 10, 6)
        for splits in ([160] * 40, [TOKEN] * 10, [6400], random_splits(6400, gen, 12)):
            y, state = run_in_chunks(model.step, x, model.init_state(2), splits)
            assert_close(f"{name} {splits[:3]}", y, full, 1e-5)
        assert_close("clip", model.clip_logits(state), model(x), 1e-5)
        idx, valid = model.output_frames(state, 3)
        assert idx.tolist() == [[7, 8, 9]] * 2 and valid.all()


def test_compiled_step_equals_eager():
    """``compile_step`` (torch.compile of the whole step) gives the eager outputs and states, chunk
    after chunk: repeated input layouts (taken without Dynamo's guard checks), a chunk of another
    length (another graph) and a new stream whose state tensors are of another kind."""
    model = mmeff.create_model("stream_mamba2_test", num_classes=4, depth=1).eval()
    x = _wave(batch=2, samples=13 * TOKEN)
    splits = [4 * TOKEN] * 3 + [TOKEN]
    with torch.inference_mode():
        y_eager, s_eager = run_in_chunks(model.step, x, model.init_state(2), splits)
    assert model.compile_step() is model
    for new_state in (lambda: model.init_state(2), lambda: torch.inference_mode()(model.init_state)(2)):
        state = new_state()  # plain tensors, then inference tensors (the same shapes)
        with torch.inference_mode():
            y, s = run_in_chunks(model.step, x, state, splits)
        assert_close("compiled step", y, y_eager, 1e-5)
        for k in s_eager:
            assert_close(f"state {k}", s[k].float(), s_eager[k].float(), 1e-5)
    assert len(model._compiled_for) < 2 * len(splits)  # signatures were met again


def test_stream_lookahead_and_frame_logits():
    model = mmeff.create_model("stream_mamba2_test", num_classes=5, lookahead=8).eval()
    x = _wave(samples=6400)
    with torch.no_grad():
        full = model.forward_frames(x)
        y, state = run_in_chunks(model.step, x, model.init_state(2), [480] * 13 + [160])
        tail, state = model.flush(state)
        y = torch.cat([y, tail], dim=1)
        idx, valid = model.output_frames(state, y.shape[1])
        assert (~valid).sum(1).tolist() == [2, 2]    # the first 2 outputs precede the stream's start
        assert_close("lookahead", y[:, 2:], full, 1e-5)
        assert_close("clip", model.clip_logits(state), model(x), 1e-5)
    framewise = mmeff.create_model("stream_mamba2_test", num_classes=5, frame_logits=True).eval()
    assert framewise(x).shape == (2, 10, 5)
    with pytest.raises(ValueError, match="multiple of subsample"):
        mmeff.create_model("stream_mamba2_test", lookahead=6)
    with pytest.raises(ValueError, match="cannot stream"):
        mmeff.create_model("stream_mamba2_test", mixer="attention", mixer_kwargs=dict(num_heads=2))


def test_streams_join_and_leave():
    """Row 1 starts a new stream mid-batch; it equals that stream run alone from its start, and row 0
    is not disturbed."""
    model = mmeff.create_model("stream_gdn_test", num_classes=4).eval()
    a, b, c = (_wave(batch=1, samples=9 * TOKEN, seed=s) for s in (4, 5, 6))
    with torch.no_grad():
        alone_a, _ = run_in_chunks(model.step, a, model.init_state(1), [3 * TOKEN] * 3)
        alone_c, _ = run_in_chunks(model.step, c[:, :6 * TOKEN], model.init_state(1), [3 * TOKEN] * 2)
        state = model.init_state(2)
        y0, state = model.step(torch.cat([a[:, :3 * TOKEN], b[:, :3 * TOKEN]]), state)
        state = model.reset_streams(state, torch.tensor([False, True]))
        assert state["pos"].tolist() == [3 * TOKEN, 0] and state["tokens"].tolist() == [3, 0]
        ys = [y0]
        for k in (1, 2):
            y, state = model.step(torch.cat([a[:, 3 * k * TOKEN:3 * (k + 1) * TOKEN],
                                             c[:, 3 * (k - 1) * TOKEN:3 * k * TOKEN]]), state)
            ys.append(y)
        assert_close("untouched row", torch.cat(ys, 1)[:1], alone_a, 1e-5)
        assert_close("joined row", torch.cat(ys[1:], 1)[1:], alone_c, 1e-5)
        _, state = model.step(a[:, :100].expand(2, -1), state)
        with pytest.raises(ValueError, match="token boundaries"):
            model.reset_streams(state, torch.tensor([True, False]))
        with pytest.raises(ValueError, match="mask"):
            model.reset_streams(model.init_state(2), torch.tensor([True]))


def test_state_save_and_restore(tmp_path):
    """A stream stopped mid-way, saved with torch.save, loaded into a new process's model, goes on
    exactly as if never interrupted."""
    model = mmeff.create_model("stream_mamba2_test", num_classes=4).eval()
    x = _wave(samples=7000)
    with torch.no_grad():
        full, _ = run_in_chunks(model.step, x, model.init_state(2), [1000] * 7)
        first, state = run_in_chunks(model.step, x[:, :3000], model.init_state(2), [1000] * 3)
        torch.save(state, tmp_path / "state.pt")
        restarted = mmeff.create_model("stream_mamba2_test", num_classes=4).eval()
        restarted.load_state_dict(model.state_dict())
        state = torch.load(tmp_path / "state.pt", weights_only=True)
        assert all(torch.is_tensor(v) for v in state.values())
        rest, _ = run_in_chunks(restarted.step, x[:, 3000:], state, [1000] * 4)
    assert_close("resumed", torch.cat([first, rest], 1), full, 1e-6)


def test_long_stream_memory_is_flat():
    model = mmeff.create_model("stream_gdn_test", num_classes=4).eval()
    chunk = 0.1 * torch.randn(1, TOKEN)
    state = model.init_state(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(20):
                _, state = model.step(chunk, state)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            for _ in range(250):
                _, state = model.step(chunk, state)
            grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    finally:
        torch.set_num_threads(threads)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    assert state["pos"].item() == 270 * TOKEN and state["tokens"].item() == 270
    assert grown_kib < 16 * 1024, f"peak RSS grew by {grown_kib} KiB over 250 chunks"


# ------------------------------------------------------------------------------- AudioMamba
def test_audiomamba_any_clip_length():
    model = mmeff.create_model("audiomamba_test", num_classes=3).eval()
    assert model.pretrained_cfg["input_size"] == (1, 16000)
    for samples, grid in ((16000, (7, 2)), (40000, (16, 2))):
        x = _wave(samples=samples)
        assert model(x).shape == (2, 3)
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + grid[0] * grid[1], 32)
        assert model.forward_intermediates(x, indices=1)[1][0].shape == (2, 32, *grid)
    # a position table of another clip length is resampled along time when loading
    longer = mmeff.create_model("audiomamba_test", num_classes=3, clip_samples=32000)
    sd = type(model).checkpoint_filter_fn(longer.state_dict(), model)
    assert sd["pos_embed"].shape == model.pos_embed.shape
    with pytest.raises(ValueError, match="n_mels"):
        mmeff.create_model("audiomamba_test", n_mels=40)


# ---------------------------------------------------------------------------- mmeff stream
def _demo_wav(path, seconds=2, rate=16000, channels=1):
    from mmeff.tasks.data import build_dataset
    ds = build_dataset("audio_events", "test", num_samples=seconds, sample_rate=rate)
    wave = torch.cat([ds[i]["input"] for i in range(seconds)])
    write_wav(path, wave.expand(channels, -1), rate)


def test_cli_stream_prints_events_and_summary(tmp_path, capsys):
    wav = tmp_path / "demo.wav"
    _demo_wav(wav, rate=8000, channels=2)                      # resampled and down-mixed
    png = tmp_path / "out.png"
    rc = main(["stream", str(wav), "--model", "stream_mamba2_test", "--threshold", "0",
               "--chunk-ms", "100", "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 channels down-mixed" in out and " end " in out and "real-time factor" in out
    assert "p99" in out and "MiB" in out and png.stat().st_size > 0
    events = [line for line in out.splitlines() if line.strip().endswith(tuple("0123456789")) and " s  " in line]
    assert events, out


def test_cli_stream_checkpoint_and_stdin(tmp_path, capsys):
    model = mmeff.create_model("stream_gdn_test", num_classes=5)
    mmeff.save_checkpoint(model, str(tmp_path / "w.safetensors"))
    x = (_wave(batch=1, samples=4000)[0] * 2 ** 15).to(torch.int16).numpy().tobytes()
    src = stdin_source("s16le", 16000, 1, 40, stream=io.BytesIO(x + b"\x01"))
    with pytest.raises(ValueError, match="stray bytes"):
        list(src.chunks)
    chunks = list(stdin_source("s16le", 16000, 1, 40, stream=io.BytesIO(x)).chunks)
    assert [len(c) for c in chunks] == [640] * 6 + [160]
    rc = main(["stream", "--model", "stream_gdn_test", "--checkpoint", str(tmp_path / "w.safetensors"),
               "--chunk-ms", "40"])
    out = capsys.readouterr().out
    assert rc == 0 and "clip: class " in out and "real-time factor" in out


def _bad_wavs(tmp_path):
    good = tmp_path / "good.wav"
    write_wav(good, torch.zeros(1, 1600), 16000)
    data = good.read_bytes()
    (tmp_path / "truncated.wav").write_bytes(data[:30])
    write_wav(tmp_path / "empty.wav", torch.zeros(1, 0), 16000)
    alaw = bytearray(data)
    alaw[20:22] = struct.pack("<H", 6)                           # format tag A-law
    (tmp_path / "alaw.wav").write_bytes(bytes(alaw))
    return {"truncated": "truncated WAV header", "empty": "0 samples", "alaw": "unsupported WAV encoding"}


def test_cli_stream_bad_wav_is_one_line_error(tmp_path, capsys):
    for name, msg in _bad_wavs(tmp_path).items():
        rc = main(["stream", str(tmp_path / f"{name}.wav"), "--model", "stream_mamba2_test"])
        err = capsys.readouterr().err
        assert rc != 0 and msg in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
    rc = main(["stream", str(tmp_path / "missing.wav"), "--model", "stream_mamba2_test"])
    assert rc != 0 and "Traceback" not in capsys.readouterr().err


def test_cli_stream_bad_wav_exits_nonzero_without_traceback(tmp_path):
    _bad_wavs(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "mmeff.cli", "stream", str(tmp_path / "truncated.wav"),
                           "--model", "stream_mamba2_test"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("mmeff stream: error:") and "truncated" in proc.stderr


# ------------------------------------------------------------------------------- training
@pytest.mark.parametrize("config,model", [("stream_mamba2_tiny", "stream_mamba2_test"),
                                          ("audiomamba_tiny", "audiomamba_test")])
def test_audio_configs_train(tmp_path, config, model):
    from mmeff.tasks.config import load_config
    from mmeff.tasks.runner import train
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "audio", f"{config}.yaml")
    cfg = load_config(path, [f"model.name={model}", "train.max_steps=2", "data.batch_size=4",
                             "data.eval_batch_size=8", "data.kwargs={num_samples: 8}", "show_predictions=0",
                             f"output_dir={tmp_path}"])
    if model == "audiomamba_test":
        cfg.model.kwargs.pop("drop_path_rate")
    res = train(cfg)
    assert res["top1"] >= 0.0 and os.path.isfile(tmp_path / "metrics.jsonl")


def test_bench_audio_rows_small():
    """The audio suite's pieces on test-size models: streaming rows against the Emformer baseline."""
    from mmeff.bench.audio import EMFORMER, EmformerStream, _latency_rows, _memory_rows
    model = mmeff.create_model("stream_mamba2_test", num_classes=4).eval()
    makers = {"stream_mamba2_test": lambda tokens: model, EMFORMER: lambda tokens: EmformerStream(model, tokens)}
    rows = _latency_rows(makers, 0.5) + _memory_rows(makers, (0.05, 0.1))
    assert len(rows) == 2 * 3 * 2 + 2 * 2
    assert all(r.ms > 0 for r in rows)
    assert {r.impl for r in rows if "latency" in r.case} == set(makers)
    assert all(EMFORMER in r.speedup for r in rows if "latency" in r.case and r.impl != EMFORMER)
