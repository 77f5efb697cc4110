"""Every registered model: the factory, the timm interface, checkpoints, any input size."""
import os

import pytest
import timm
import torch

import mmeff

TEST_MODELS = mmeff.list_models("*_test")
ALL_MODELS = mmeff.list_models()


def _is_audio(model):
    """Audio models describe a mono waveform: input_size (1, samples)."""
    return len(model.pretrained_cfg["input_size"]) == 2


def _input(model, batch=2, scale=1):
    if _is_audio(model):
        c, n = model.pretrained_cfg["input_size"]
        return torch.randn(batch, c, n * scale)
    c, h, w = model.pretrained_cfg["input_size"]
    return torch.randn(batch, c, h * scale, w * scale)


def test_every_family_has_a_test_size():
    assert TEST_MODELS, "no *_test models registered"
    for name in ALL_MODELS:
        family = name.split("_")[0]
        assert any(t.startswith(family + "_") for t in TEST_MODELS), f"{family} has no *_test size"


def test_models_are_in_timms_registry():
    timm_models = set(timm.list_models())
    assert set(ALL_MODELS) <= timm_models
    m1, m2 = mmeff.create_model(TEST_MODELS[0]), timm.create_model(TEST_MODELS[0])
    assert type(m1) is type(m2)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_full_size_builds_on_meta(name):
    model = mmeff.create_model(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) > 0
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name and len(cfg["input_size"]) in (2, 3)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_forward_backward(name):
    model = mmeff.create_model(name, num_classes=5)
    x = _input(model)
    y = model(x)
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


@pytest.mark.parametrize("name", TEST_MODELS)
def test_timm_interface(name):
    model = mmeff.create_model(name, num_classes=5).eval()
    x = _input(model)
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    assert isinstance(model.no_weight_decay(), set)
    final, inter = model.forward_intermediates(x)
    assert len(inter) == len(model.feature_info)
    model.set_grad_checkpointing(True)
    model.train()
    model(x).sum().backward()
    # prune to the first layer: the kept intermediate is unchanged, the norm is gone
    model.eval()
    first = model.forward_intermediates(x, indices=[0], intermediates_only=True)[0]
    assert model.prune_intermediate_layers([0], prune_norm=True) == [0]
    assert isinstance(model.norm, torch.nn.Identity)
    torch.testing.assert_close(model.forward_intermediates(x, indices=[0], intermediates_only=True)[0], first)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_features_only(name):
    model = mmeff.create_model(name, features_only=True, out_indices=(0, -1)).eval()
    feats = model(_input(model))
    assert len(feats) == 2
    for f, ch in zip(feats, model.feature_info.channels()):
        assert f.dim() in ((3, 4) if _is_audio(model) else (4,)) and f.shape[1] == ch


@pytest.mark.parametrize("name", TEST_MODELS)
def test_other_input_sizes(name):
    model = mmeff.create_model(name, num_classes=4).eval()
    if _is_audio(model):  # any clip length; mono only
        c, n = model.pretrained_cfg["input_size"]
        for length in (2 * n, n + n // 2 + 1):
            assert model(torch.randn(1, c, length)).shape == (1, 4)
        with pytest.raises(ValueError, match="expected input"):
            model(torch.randn(1, c + 1, n))
        return
    c, h, w = model.pretrained_cfg["input_size"]
    for size in ((h * 2, w), (h, w + w // 2)):
        patch = model.patch_embed.patch_size if hasattr(model, "patch_embed") else (32, 32)
        size = tuple(s - s % p for s, p in zip(size, patch))
        assert model(torch.randn(1, c, *size)).shape == (1, 4)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, c, h + 1, w))
    with pytest.raises(ValueError, match="channels|expected input"):
        model(torch.randn(1, c + 1, h, w))


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", TEST_MODELS)
def test_checkpoint_round_trip(name, ext, tmp_path):
    model = mmeff.create_model(name, num_classes=3).eval()
    path = os.path.join(tmp_path, "w" + ext)
    mmeff.save_checkpoint(model, path)
    loaded = mmeff.create_model(name, num_classes=3, checkpoint_path=path).eval()
    x = _input(model)
    torch.testing.assert_close(loaded(x), model(x))


def test_checkpoint_errors(tmp_path):
    name = TEST_MODELS[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mmeff.create_model(name, checkpoint_path=str(tmp_path / "missing.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not read"):
        mmeff.create_model(name, checkpoint_path=str(bad))
    other = tmp_path / "other.pth"
    mmeff.save_checkpoint(mmeff.create_model(name, num_classes=7), str(other))
    with pytest.raises(ValueError, match="head"):
        mmeff.create_model(name, num_classes=3, checkpoint_path=str(other))
    wrong_ext = tmp_path / "w.txt"
    wrong_ext.write_text("x")
    with pytest.raises(ValueError, match="must end in"):
        mmeff.create_model(name, checkpoint_path=str(wrong_ext))


def test_pickled_code_is_refused(tmp_path):
    """torch.load(weights_only=True): a checkpoint carrying arbitrary objects is not executed."""
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": _Evil()}, path)
    with pytest.raises(ValueError, match="could not read"):
        mmeff.create_model(TEST_MODELS[0], checkpoint_path=str(path))


class _Evil:
    pass


def test_bad_names_and_keys():
    with pytest.raises(ValueError, match="did you mean"):
        mmeff.create_model(TEST_MODELS[0] + "x")
    with pytest.raises(ValueError, match="no_such_key"):
        mmeff.create_model(TEST_MODELS[0], no_such_key=1)
    with pytest.raises(ValueError, match="never downloads"):
        mmeff.create_model(TEST_MODELS[0], pretrained=True)


def test_pretrained_from_local_file(tmp_path):
    name = TEST_MODELS[0]
    src = mmeff.create_model(name).eval()
    path = str(tmp_path / "w.safetensors")
    mmeff.save_checkpoint(src, path)
    model = mmeff.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    x = _input(model)
    torch.testing.assert_close(model(x), src(x))


def test_mixer_override():
    model = mmeff.create_model("mixervit_test", mixer="attention",
                               mixer_kwargs=dict(num_heads=2, num_kv_heads=1))
    assert model.blocks[0].mixer.mixer.num_kv_heads == 1  # inside the class-token wrapper
    with pytest.raises(ValueError, match="unknown mixer"):
        mmeff.create_model("mixervit_test", mixer="atention")
