"""Datasets of mmeff.tasks.data: registry, generated data (shapes, audio_events), WAV I/O, folders."""
import math
import struct
import wave

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmeff.tasks.data import build_dataset, list_datasets, read_wav, write_wav
from mmeff.tasks.data.audio_events import (CLASSES, FALLING, RISING, chirp, dtmf_frequencies,
                                           event_phrase, tone)
from mmeff.tasks.data.shapes import Scene, Shape, caption_scene, render_scenes
from mmeff.tasks.data.wav import wav_info


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small per-sample tensor ops run far faster on one thread on a shared, loaded CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def peak_freqs(x: torch.Tensor, sample_rate: int, k: int) -> list:
    """Frequencies (Hz) of the ``k`` largest, well separated FFT magnitude peaks of ``x``."""
    spec = torch.fft.rfft(x.double() * torch.hann_window(len(x), dtype=torch.float64)).abs()
    freqs = torch.fft.rfftfreq(len(x), 1 / sample_rate)
    found = []
    for i in spec.argsort(descending=True).tolist():
        if all(abs(freqs[i] - f) > 40 for f in found):
            found.append(freqs[i].item())
        if len(found) == k:
            return sorted(found)
    return sorted(found)


def equal_samples(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


# ---------------------------------------------------------------- registry


def test_registry_and_option_errors(tmp_path):
    assert {"shapes", "audio_events", "image_folder", "wav_folder"} <= set(list_datasets())
    with pytest.raises(ValueError, match="split.*'train'.*'bogus'"):
        build_dataset("shapes", "bogus")
    with pytest.raises(ValueError, match=r"unknown option 'colour'.*valid options: \[.*'target'"):
        build_dataset("shapes", "train", colour="red")
    with pytest.raises(ValueError, match="name.*'nope'"):
        build_dataset("nope", "train")
    with pytest.raises(ValueError, match="missing required.*root"):
        build_dataset("image_folder", "train")
    with pytest.raises(ValueError, match="target.*'size'"):
        build_dataset("shapes", "train", target="size")
    with pytest.raises(ValueError, match="event_seconds"):
        build_dataset("audio_events", "train", clip_seconds=0.2)


# ---------------------------------------------------------------- shapes


def test_shapes_deterministic_and_split_disjoint():
    a = build_dataset("shapes", "train", num_samples=8)
    b = build_dataset("shapes", "train", num_samples=100)   # a sample does not depend on num_samples
    assert all(equal_samples(a[i], b[i]) for i in range(8))
    batch = a.__getitems__([3, 0, 5])                        # the batched path gives the same samples
    assert all(equal_samples(s, a[i]) for s, i in zip(batch, [3, 0, 5]))
    val = build_dataset("shapes", "val", num_samples=8)
    other = build_dataset("shapes", "train", num_samples=8, seed=1)
    for i in range(8):
        assert not torch.equal(a[i]["input"], val[i]["input"])
        assert not torch.equal(a[i]["input"], other[i]["input"])
    assert [len(build_dataset("shapes", s)) for s in ("train", "val", "test")] == [2000, 500, 500]


def test_shapes_samples_and_collate():
    ds = build_dataset("shapes", "train", num_samples=64)
    assert ds.task == "image" and not ds.multi_label
    assert ds.classes == ["circle", "square", "triangle", "star", "cross"] and ds.num_classes == 5
    batch = next(iter(DataLoader(ds, batch_size=64)))
    x = batch["input"]
    assert x.shape == (64, 3, 64, 64) and x.dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and 0 <= batch["label"].min() <= batch["label"].max() < 5
    assert len(batch["caption"]) == 64 and all(isinstance(c, str) for c in batch["caption"])
    # normalised by the dataset's mean / std
    assert x.mean((0, 2, 3)).abs().max() < 0.3 and ((x.std((0, 2, 3)) - 1).abs() < 0.3).all()
    # several targets and sizes; labels agree with the scenes
    for target, classes in [("color", 6), ("count", 3)]:
        d = build_dataset("shapes", "val", num_samples=16, target=target, img_size=40)
        assert d.num_classes == classes and d[0]["input"].shape == (3, 40, 40)
        for i in range(16):
            shapes = d.scene(i).shapes
            want = shapes[-1].color if target == "color" else ["one", "two", "three"][len(shapes) - 1]
            assert d.classes[d[i]["label"]] == want
            assert shapes[-1].radius == max(s.radius for s in shapes)   # the main shape is largest


def test_shapes_controlled_scene_caption_and_pixels():
    scene = Scene([Shape("square", "blue", 6, 48, 32), Shape("circle", "red", 14, 16, 32)])
    assert caption_scene(scene, 64) == "a large red circle left of a small blue square"
    img = render_scenes([scene], 64, noise=0.0)[0]                      # [3, H, W] in [0, 1]
    r, g, b = img[:, 32, 16].tolist()
    assert r > 0.75 and g < 0.3 and b < 0.3                            # red disc centre
    r, g, b = img[:, 32, 48].tolist()
    assert b > 0.75 and r < 0.35                                       # blue square centre
    assert img[:, 5, 32].max() < 0.5                                   # dark background elsewhere
    alone = Scene([Shape("star", "yellow", 5, 52, 10)])
    assert caption_scene(alone, 64) == "a small yellow star in the top right"
    ds = build_dataset("shapes", "test", num_samples=4)
    for i in range(4):
        main = ds.scene(i).shapes[-1]
        assert ds[i]["caption"].startswith(f"a {'large' if main.radius >= 0.15 * 64 else 'small'} "
                                           f"{main.color} {main.kind}")


# ---------------------------------------------------------------- audio_events


def test_audio_events_samples_determinism_and_collate():
    ds = build_dataset("audio_events", "train", num_samples=8)
    assert ds.task == "audio" and ds.sample_rate == 16000 and ds.classes[0] == "silence"
    s = ds[0]
    assert s["input"].shape == (16000,) and s["input"].dtype == torch.float32
    assert s["input"].abs().max() <= 1.0
    assert s["frame_labels"].shape == (100,) and s["frame_labels"].dtype == torch.int64
    assert equal_samples(s, build_dataset("audio_events", "train", num_samples=20)[0])
    assert not torch.equal(s["input"], build_dataset("audio_events", "val", num_samples=8)[0]["input"])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["input"].shape == (4, 16000) and batch["frame_labels"].shape == (4, 100)
    assert batch["label"].shape == (4,) and len(batch["caption"]) == 4
    evs, _ = ds.events(0)
    assert s["label"] == evs[0].label
    assert s["caption"] == " then ".join(event_phrase(e.label) for e in evs)
    # multi-label: multi-hot of the classes present in the frames
    ml = build_dataset("audio_events", "val", num_samples=4, multi_label=True, clip_seconds=0.5)
    assert ml.multi_label
    for i in range(4):
        m = ml[i]
        assert m["label"].dtype == torch.float32 and m["label"].shape == (len(CLASSES),)
        assert set(m["label"].nonzero().flatten().tolist()) == set(m["frame_labels"].tolist())
        assert m["input"].shape == (8000,) and m["frame_labels"].shape == (50,)
    dom = build_dataset("audio_events", "val", num_samples=4, target="dominant")
    evs, _ = dom.events(1)
    assert dom[1]["label"] == max(evs, key=lambda e: e.end - e.start).label


def test_dtmf_frequencies_and_chirps():
    assert dtmf_frequencies(1) == (697, 1209) and dtmf_frequencies(5) == (770, 1336)
    assert dtmf_frequencies(9) == (852, 1477) and dtmf_frequencies(0) == (941, 1336)
    with pytest.raises(ValueError, match="digit"):
        dtmf_frequencies(10)
    for d in (0, 3, 7):
        x = tone(dtmf_frequencies(d), 4000, 16000)
        assert all(abs(f - e) < 8 for f, e in zip(peak_freqs(x, 16000, 2), dtmf_frequencies(d)))
    # a digit event inside a generated clip has the same two peaks
    ds = build_dataset("audio_events", "train", num_samples=40)
    i, ev = next((i, e) for i in range(40) for e in ds.events(i)[0] if 1 <= e.label <= 10)
    seg = ds[i]["input"][ev.start:ev.end]
    got, want = peak_freqs(seg, 16000, 2), dtmf_frequencies(ev.label - 1)
    assert all(abs(f - e) < 20 for f, e in zip(got, want)), (got, want)
    # chirps sweep the right way: zero-crossing rate grows (rising) or falls
    up = chirp(400.0, 4000.0, 8000, 16000)
    crossings = lambda x: (x[1:].sign() != x[:-1].sign()).sum().item()
    assert crossings(up[-1000:]) > 3 * crossings(up[:1000])
    assert CLASSES[RISING] == "rising chirp" and CLASSES[FALLING] == "falling chirp"


def test_audio_frame_labels_align_with_energy():
    ds = build_dataset("audio_events", "test", num_samples=12)
    for i in range(12):
        s = ds[i]
        frames = s["input"][: 100 * 160].reshape(100, 160)
        rms = frames.pow(2).mean(1).sqrt()
        lab = s["frame_labels"]
        inner = torch.ones(100, dtype=torch.bool)       # frames away from label changes (fades)
        change = torch.nonzero(lab[1:] != lab[:-1]).flatten()
        inner[change] = inner[change + 1] = False
        assert (lab == 0).any() and (lab != 0).any()
        assert rms[(lab == 0) & inner].max() < 0.02
        assert rms[(lab != 0) & inner].min() > 0.05
        for ev in ds.events(i)[0]:
            centre = (ev.start + ev.end) // 2 // 160
            assert lab[centre] == ev.label


# ---------------------------------------------------------------- WAV I/O


def test_wav_roundtrip_all_encodings(tmp_path):
    x = torch.rand(2, 301) * 1.8 - 0.9
    tol = {"pcm8": 1e-2, "pcm16": 1e-4, "pcm24": 1e-6, "pcm32": 1e-8, "float32": 0, "float64": 0}
    for enc, t in tol.items():
        for extensible in (False, True):
            path = tmp_path / f"{enc}{extensible}.wav"
            write_wav(path, x, 8000, enc, extensible=extensible)
            y, sr = read_wav(path)
            assert sr == 8000 and y.shape == (2, 301) and y.dtype == torch.float32
            assert (y - x).abs().max() <= t, enc
    # a file from the standard library's writer (16-bit stereo) reads the same
    pcm = (x.T.numpy() * 32767).round().astype("<i2")
    with wave.open(str(tmp_path / "std.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(pcm.tobytes())
    y, sr = read_wav(tmp_path / "std.wav")
    assert sr == 8000 and torch.equal(y, torch.from_numpy(pcm.T / 32768).float())


def test_wav_errors(tmp_path):
    good = tmp_path / "good.wav"
    write_wav(good, torch.zeros(100), 16000)
    raw = good.read_bytes()
    cases = {
        "short": (raw[:8], "truncated WAV header"),
        "nofmt": (raw[:12], "truncated WAV header: no 'fmt '"),
        "notriff": (b"OggS" + raw[4:], "not a RIFF/WAVE"),
        "mulaw": (raw[:20] + struct.pack("<H", 7) + raw[22:], "unsupported WAV encoding: mu-law"),
        "float16": (raw[:20] + struct.pack("<H", 3) + raw[22:], "unsupported WAV encoding: IEEE float"),
        "empty": (raw[:40] + struct.pack("<I", 0), "0 samples"),
        "cutdata": (raw[:-50], "truncated WAV data"),
    }
    for name, (data, msg) in cases.items():
        path = tmp_path / f"{name}.wav"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=msg) as err:
            read_wav(path)
        assert str(path) in str(err.value)
    # streaming writers' "unknown size" runs to the end of file
    path = tmp_path / "stream.wav"
    path.write_bytes(raw[:40] + struct.pack("<I", 0xFFFFFFFF) + raw[44:])
    assert wav_info(path).num_frames == 100


# ---------------------------------------------------------------- folders


def write_png(path, colour, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_images(root):
    for split in ("train", "val"):
        for i in range(2):
            write_png(root / split / "cat" / f"{i}.png", (200, 10, 10))
            write_png(root / split / "dog" / f"{i}.png", (10, 10, 200))
    Image.new("RGB", (9, 9), (0, 255, 0)).save(root / "train" / "dog" / "x.jpg")


def test_image_folder(tmp_path):
    make_images(tmp_path)
    train = build_dataset("image_folder", "train", root=str(tmp_path), img_size=16)
    val = build_dataset("image_folder", "val", root=str(tmp_path), img_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    assert train.classes == val.classes == ["cat", "dog"] and len(train) == 5 and len(val) == 4
    assert train.task == "image" and train.num_classes == 2
    s = val[0]
    assert s["input"].shape == (3, 16, 16) and s["label"] == 0 and s["caption"] == "a photo of a cat"
    assert s["input"][0].mean() > 0.7 and s["input"][2].mean() < 0.1     # red, unnormalised
    batch = next(iter(DataLoader(train, batch_size=5)))
    assert batch["input"].shape == (5, 3, 16, 16) and batch["label"].tolist() == [0, 0, 1, 1, 1]


def test_image_folder_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        build_dataset("image_folder", "train", root=str(tmp_path / "nowhere"))
    make_images(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "test")):
        build_dataset("image_folder", "test", root=str(tmp_path))
    (tmp_path / "val" / "emu").mkdir()
    with pytest.raises(ValueError, match="class folder .*emu has no"):
        build_dataset("image_folder", "val", root=str(tmp_path))
    with pytest.warns(UserWarning, match="skipped 1 empty class folders"):
        ds = build_dataset("image_folder", "val", root=str(tmp_path), on_empty="skip")
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 4             # indices stay stable
    for name in ("bad.png", "worse.jpg"):
        (tmp_path / "train" / "cat" / name).write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="corrupt file .*bad.png"):
        build_dataset("image_folder", "train", root=str(tmp_path), on_empty="skip")
    with pytest.warns(UserWarning) as record:   # train has no emu folder and two corrupt files
        ds = build_dataset("image_folder", "train", root=str(tmp_path), on_empty="skip", on_corrupt="skip")
    messages = sorted(str(w.message) for w in record)
    assert len(ds) == 5 and len(messages) == 2
    assert messages[0].startswith("skipped 1 empty class folders") and "train/emu" in messages[0]
    assert messages[1].startswith("skipped 2 corrupt files") and "bad.png" in messages[1]


def test_wav_folder_resamples_and_downmixes(tmp_path):
    for name in ("beep", "hum"):
        (tmp_path / "train" / name).mkdir(parents=True)
    t8 = torch.arange(4000) / 8000                                   # 0.5 s at 8 kHz, stereo 16-bit
    left = 0.5 * torch.sin(2 * math.pi * 440 * t8)
    write_wav(tmp_path / "train" / "beep" / "a.wav", torch.stack([left, 0 * left]), 8000, "pcm16")
    t44 = torch.arange(66150) / 44100                                # 1.5 s at 44.1 kHz, float32
    write_wav(tmp_path / "train" / "hum" / "b.wav", 0.8 * torch.sin(2 * math.pi * 1000 * t44), 44100,
              "float32")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "val")):
        build_dataset("wav_folder", "val", root=str(tmp_path))
    ds = build_dataset("wav_folder", "train", root=str(tmp_path))
    assert ds.classes == ["beep", "hum"] and ds.sample_rate == 16000 and ds.task == "audio"
    beep, hum = ds[0], ds[1]
    assert beep["input"].shape == hum["input"].shape == (16000,)
    assert beep["caption"] == "a recording of beep" and beep["label"] == 0
    assert hum["frame_labels"].shape == (100,) and (hum["frame_labels"] == 1).all()
    b = beep["input"]
    assert abs(b[:8000].abs().max().item() - 0.25) < 0.01 and b[8050:].abs().max() < 1e-3   # mono, padded
    assert abs(peak_freqs(b[:8000], 16000, 1)[0] - 440) < 4
    assert abs(peak_freqs(hum["input"], 16000, 1)[0] - 1000) < 4
    assert abs(hum["input"].abs().max().item() - 0.8) < 0.01
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["input"].shape == (2, 16000) and batch["frame_labels"].shape == (2, 100)


def test_wav_folder_bad_input(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir()
    write_wav(tmp_path / "train" / "a" / "ok.wav", torch.zeros(800), 8000)
    with pytest.raises(ValueError, match="class folder .*b has no .wav files"):
        build_dataset("wav_folder", "train", root=str(tmp_path))
    write_wav(tmp_path / "train" / "b" / "ok.wav", torch.zeros(800), 8000)
    (tmp_path / "train" / "b" / "bad.wav").write_bytes(b"RIFF\0\0")
    with pytest.raises(ValueError, match="corrupt file .*bad.wav: truncated WAV header"):
        build_dataset("wav_folder", "train", root=str(tmp_path))
    with pytest.warns(UserWarning, match="skipped 1 corrupt files"):
        ds = build_dataset("wav_folder", "train", root=str(tmp_path), on_corrupt="skip")
    assert len(ds) == 2
