"""Vision encoder families: paper parameter counts, Vim's two directions, mixer / scan overrides,
features for dense prediction, bad inputs.  (tests/test_factory.py runs every ``*_test`` model
through the timm interface, checkpoints and other input sizes.)"""
import pytest
import torch

import mmeff
from mmeff.encoders._vision import ClassTokenMixer, GridScannedMixer
from mmeff.mixers import Mixer

# (model, parameters in the paper, millions)
PAPER = [
    ("vim_tiny_patch16_224", 7.0), ("vim_small_patch16_224", 26.0), ("vim_base_patch16_224", 98.0),
    ("vmamba_tiny", 30.0), ("vmamba_small", 50.0), ("vmamba_base", 89.0),
    ("plainmamba_l1", 7.3), ("plainmamba_l2", 25.7), ("plainmamba_l3", 50.5),
    ("localvim_tiny", 8.0), ("localvmamba_tiny", 26.0), ("mambavision_tiny", 31.8), ("vig_tiny", 6.0),
]
FAMILIES = ["vim_test", "vmamba_test", "plainmamba_test", "localvim_test", "localvmamba_test",
            "mambavision_test", "vig_test"]


def _x(batch=1, h=64, w=64):
    return torch.randn(batch, 3, h, w)


def _mixers(model):
    return [m for m in model.modules() if isinstance(m, Mixer)]


@pytest.mark.parametrize("name,millions", PAPER)
def test_parameter_count_matches_paper(name, millions):
    model = mmeff.create_model(name, device="meta")
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - millions) / millions < 0.05, f"{name}: {n:.2f}M parameters, paper {millions}M"


def test_vim_uses_both_directions():
    torch.manual_seed(0)
    model = mmeff.create_model("vim_test").eval()
    x = _x()
    with torch.no_grad():
        y0 = model(x)
        for blk in model.blocks:
            mamba = blk.mixer.mixer
            assert mamba.ssm_backward is not None
            for p in mamba.ssm_backward.parameters():
                p.add_(0.5 * torch.randn_like(p))
        y1 = model(x)
    assert (y1 - y0).abs().max() > 1e-3 * y0.abs().max(), "the backward direction has no effect"


def test_vim_class_token_sits_in_the_middle_of_each_path():
    seen = []

    class Record(torch.nn.Module):
        def __init__(self, dim, **kw):
            super().__init__()
            self.dim = dim

        def forward(self, x):
            seen.append(x.detach().clone())
            return x

    for scan, paths in ((None, 1), ("cross", 4)):
        seen.clear()
        model = mmeff.create_model("vim_test", mixer=Record, scan=scan).eval()
        with torch.no_grad():
            model(_x(batch=2))
        seq = seen[0]  # first block: [B*K, 1 + N, D]
        N = seq.shape[1] - 1
        assert seq.shape[0] == 2 * paths
        with torch.no_grad():
            cls = model.blocks[0].norm1(model.cls_token)[0, 0]  # block 0 sees the normed class token
        torch.testing.assert_close(seq[:, N // 2], cls.expand(2 * paths, -1))


def test_vim_raster_scan_equals_default_order():
    torch.manual_seed(0)
    ref = mmeff.create_model("vim_test").eval()
    model = mmeff.create_model("vim_test", scan="raster").eval()
    model.load_state_dict(ref.state_dict())
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_vim_mixer_and_scan_override():
    model = mmeff.create_model("vim_test", mixer="gated_deltanet", scan="hilbert", num_classes=3)
    mix = model.blocks[0].mixer
    assert isinstance(mix, ClassTokenMixer) and mix.scan_name == "hilbert"
    assert type(mix.mixer).mixer_name == "gated_deltanet" and not mix.mixer.causal
    assert model(_x(h=96)).shape == (1, 3)


@pytest.mark.parametrize("name,kw,check", [
    ("vmamba_test", dict(scan="snake4"), lambda m: m.scan_name == "snake4"),
    ("vmamba_test", dict(mixer="gla", mixer_kwargs=dict(num_heads=2)),
     lambda m: isinstance(m, GridScannedMixer) and m.scan_name == "cross"),
    ("vmamba_test", dict(mixer="window", mixer_kwargs=dict(num_heads=2, window_size=2)),
     lambda m: type(m).mixer_name == "window"),
    ("plainmamba_test", dict(mixer="mamba", mixer_kwargs=dict(d_state=4)),
     lambda m: isinstance(m, GridScannedMixer) and m.scan_name == "snake4"),
    ("localvim_test", dict(scan="zigzag"), lambda m: m.scan_name == "zigzag"),
    ("mambavision_test", dict(scan="cross"), lambda m: isinstance(m, GridScannedMixer)),
    ("vig_test", dict(mixer_kwargs=dict(inner="gated_deltanet", inner_kwargs=dict(num_heads=2)),
                      scan="cross"),
     lambda m: type(m.inner.mixers[0]).mixer_name == "gated_deltanet"),
])
def test_family_overrides(name, kw, check):
    model = mmeff.create_model(name, num_classes=2, **kw).eval()
    first = [m for m in _mixers(model) if type(m).__module__ != "mmeff.mixers.attention"][0]
    assert check(first), first
    with torch.no_grad():
        assert model(_x(w=128)).shape == (1, 2)


def test_layer_taking_scans_get_the_block_index():
    model = mmeff.create_model("localvim_test", scan="zigzag")
    assert [blk.mixer.scan_kwargs["layer"] for blk in model.blocks] == [0, 1]
    model = mmeff.create_model("localvim_test")  # LocalVim-T's searched direction sets, per layer
    assert [blk.mixer.scan_kwargs["layer"] for blk in model.blocks] == [0, 1]


def test_localmamba_scan():
    scan = mmeff.create_scan("localmamba", (14, 14), directions=("h", "v_flip", "w7", "w2_flip"))
    assert scan.num_paths == 4
    assert scan.paths[0].tolist() == list(range(196))
    assert scan.paths[1].tolist() == mmeff.create_scan("column", (14, 14)).paths[0].flip(0).tolist()
    assert scan.paths[2, :8].tolist() == [0, 1, 2, 3, 4, 5, 6, 14]  # a 7x7 window row by row
    layer3 = mmeff.create_scan("localmamba", (4, 4), layer=3, table="vmamba")
    assert layer3.num_paths == 4
    with pytest.raises(ValueError, match="direction"):
        mmeff.create_scan("localmamba", (4, 4), directions=("diag",))


def test_dense_features():
    model = mmeff.create_model("vmamba_test", features_only=True, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        feats = model(_x(h=96, w=64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(24, 16), (12, 8), (6, 4), (3, 2)]
    assert [f.shape[1] for f in feats] == model.feature_info.channels() == [16, 32, 64, 128]
    vim = mmeff.create_model("vim_test", features_only=True, out_indices=(0, 1)).eval()
    with torch.no_grad():
        feats = vim(_x(h=96, w=64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 6, 4)] * 2


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = mmeff.create_model("vmamba_test", num_classes=2)
    x = _x(batch=2)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append(model.stem[0].weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


def test_no_weight_decay_lists_ssm_parameters():
    names = mmeff.create_model("vmamba_test").no_weight_decay()
    assert "stages.0.blocks.0.mixer.A_log" in names and "stages.0.blocks.0.mixer.D" in names
    assert {"pos_embed", "cls_token"} <= mmeff.create_model("vim_test").no_weight_decay()


def test_bf16_autocast():
    model = mmeff.create_model("vmamba_test", num_classes=2).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(_x())
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_names(name):
    with pytest.raises(ValueError, match="unknown scan 'hilbrt'; did you mean"):
        mmeff.create_model(name, scan="hilbrt")
    with pytest.raises(ValueError, match="unknown mixer 'mamab'; did you mean"):
        mmeff.create_model(name, mixer="mamab")


def test_bad_inputs():
    model = mmeff.create_model("vmamba_test")
    with pytest.raises(ValueError, match=r"expected input \[B, 3, H, W\]"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 3, 64, 48))
    with pytest.raises(ValueError, match="reads the token grid itself"):
        mmeff.create_model("vmamba_test", mixer="window", scan="cross")
    with pytest.raises(ValueError, match="global_pool='token' needs"):
        mmeff.create_model("plainmamba_test", global_pool="token")
    with pytest.raises(ValueError, match="stem must be"):
        mmeff.create_model("vmamba_test", stem="hexagon")


def test_vision_bench_quick():
    from mmeff.bench import BenchConfig, run_suite
    rows = run_suite("vision", BenchConfig(quick=True, lengths=(64,), tokens=32, repeat=1, warmup=0))
    assert {r.impl for r in rows} == {"vim_test", "vmamba_test", "plainmamba_test", "deit_tiny", "swin_tiny"}
    by = {r.impl: r for r in rows}
    assert set(by["vim_test"].speedup) == {"deit_tiny", "swin_tiny"}
    vim = by["vim_test"]
    assert vim.case == "64px B=2" and vim.img_per_s == pytest.approx(2e3 / vim.ms)
    with pytest.raises(ValueError, match="divisible by 32"):
        run_suite("vision", BenchConfig(quick=True, lengths=(80,), repeat=1, warmup=0))
