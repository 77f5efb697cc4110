"""Full attention mixers: RoPE (1D / axial), QK-norm, GQA / MQA, KV caches, MLA."""
import pytest
import torch
from timm.models.vision_transformer import Attention as TimmAttention

import mmeff
from mmeff.layers import RotaryEmbedding
from mmeff.layers.rope import grid_coords
from mmeff.testing import assert_close, random_splits, run_in_chunks

D = 48


def _step_matches_forward(m, L, seed=0, splits=3):
    x = torch.randn(2, L, m.dim)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        full = m(x)
        for _ in range(splits):
            y, state = run_in_chunks(m.step, x, m.init_state(2), random_splits(L, gen))
            assert_close(f"{type(m).__name__} step", y, full, 1e-5)
    return state


# ----------------------------------------------------------------------------- RoPE

def test_rope_1d_is_relative():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    dot = lambda i, j: (rope(q, torch.tensor([i])) * rope(k, torch.tensor([j]))).sum()  # noqa: E731
    torch.testing.assert_close(dot(3, 7), dot(103, 107))
    assert not torch.allclose(dot(3, 7), dot(3, 8))
    x = torch.randn(2, 5, 3, 16)
    torch.testing.assert_close(rope(x, torch.arange(5)).norm(dim=-1), x.norm(dim=-1))  # a rotation


@pytest.mark.parametrize("ndim,dim", [(2, 16), (3, 18), (3, 100)])
def test_rope_axial_is_relative_per_axis(ndim, dim):
    rope = RotaryEmbedding(dim, ndim)
    assert sum(rope.sizes) == dim // 2 and max(rope.sizes) - min(rope.sizes) <= 1
    q, k = torch.randn(1, 1, 1, dim), torch.randn(1, 1, 1, dim)
    a, b = torch.randint(0, 9, (1, ndim)), torch.randint(0, 9, (1, ndim))
    shift = torch.randint(0, 50, (1, ndim))
    dot = lambda i, j: (rope(q, i) * rope(k, j)).sum()  # noqa: E731
    torch.testing.assert_close(dot(a, b), dot(a + shift, b + shift))
    other = b.clone()
    other[0, -1] += 1  # moving one axis changes the score
    assert not torch.allclose(dot(a, b), dot(a, other))


def test_rope_errors_and_grid_coords():
    with pytest.raises(ValueError, match="dim"):
        RotaryEmbedding(15)
    with pytest.raises(ValueError, match="ndim"):
        RotaryEmbedding(16, 4)
    with pytest.raises(ValueError, match="coords"):
        RotaryEmbedding(16, 2)(torch.randn(1, 3, 1, 16), torch.zeros(3, 1))
    c = grid_coords((2, 3, 4), 5, start=22)  # the first axis keeps counting past the grid
    assert c.tolist() == [[1, 2, 2], [1, 2, 3], [2, 0, 0], [2, 0, 1], [2, 0, 2]]


# ----------------------------------------------------------------------------- attention

@pytest.mark.parametrize("kv_heads,rope,qk_norm", [(4, None, False), (2, "1d", True), (1, "1d", False)])
def test_attention_gqa_mqa_step_equals_forward(kv_heads, rope, qk_norm):
    m = mmeff.create_mixer("attention", D, num_heads=4, num_kv_heads=kv_heads, rope=rope, qk_norm=qk_norm)
    state = _step_matches_forward(m.eval(), 29)
    assert state["k"].shape == (2, 29, kv_heads, D // 4) and state["pos"] == 29


@pytest.mark.parametrize("rope,grid,prefix", [("2d", (4, 5), 1), ("3d", (2, 3, 4), 0)])
def test_attention_axial_rope_step_equals_forward(rope, grid, prefix):
    m = mmeff.create_mixer("attention", D, num_heads=2, rope=rope, grid=grid, num_prefix_tokens=prefix,
                           qk_norm=True).eval()
    n = prefix + torch.Size(grid).numel()
    _step_matches_forward(m, n)
    # explicit positions give the same result as the grid (prefix tokens left unrotated)
    x = torch.randn(1, n, D)
    with torch.no_grad():
        q = torch.randn(1, n, 2, D // 2)
        coords = grid_coords(grid, n - prefix)
        rotated = m.rope(q[:, prefix:], coords)
        torch.testing.assert_close(m.rope.rotate(q, 0, grid, prefix), torch.cat([q[:, :prefix], rotated], 1))
        bidir = mmeff.create_mixer("attention", D, num_heads=2, rope=rope, causal=False)
        torch.testing.assert_close(bidir(x[:, prefix:], grid=grid),
                                   bidir(x[:, prefix:], positions=coords))


def test_attention_grid_errors_and_set_grid():
    m = mmeff.create_mixer("attention", D, num_heads=2, rope="2d", causal=False)
    x = torch.randn(1, 12, D)
    with pytest.raises(ValueError, match="grid"):
        m(x)
    with pytest.raises(ValueError, match="12"):
        m(x, grid=(3, 5))
    m.set_grid((3, 4))
    assert m(x).shape == x.shape
    with pytest.raises(ValueError, match="grid"):
        m.set_grid((3, 0))
    with pytest.raises(ValueError, match="rope"):
        mmeff.create_mixer("attention", D, rope="4d")
    with pytest.raises(RuntimeError, match="causal"):
        m.step(x, None)


def test_attention_params_match_timm():
    ours = mmeff.create_mixer("attention", D, num_heads=4, causal=False)
    ref = TimmAttention(D, num_heads=4, qkv_bias=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    normed = mmeff.create_mixer("attention", D, num_heads=4, qk_norm=True)
    assert sum(p.numel() for p in normed.parameters()) == sum(p.numel() for p in ours.parameters()) + 2 * D // 4
    gqa = mmeff.create_mixer("attention", D, num_heads=4, num_kv_heads=1)
    assert gqa.qkv.out_features == (4 + 2) * D // 4


# ----------------------------------------------------------------------------- MLA

@pytest.mark.parametrize("q_lora", [None, 24])
def test_mla_step_equals_forward_and_caches_latent_only(q_lora):
    m = mmeff.create_mixer("mla", D, num_heads=4, kv_lora_rank=16, rope_head_dim=6, q_lora_rank=q_lora).eval()
    state = _step_matches_forward(m, 27)
    assert set(state) == {"c_kv", "k_rope", "pos"}
    assert state["c_kv"].shape == (2, 27, 16) and state["k_rope"].shape == (2, 27, 6)
    per_token = sum(state[n][0, 0].numel() for n in ("c_kv", "k_rope"))
    assert per_token == 16 + 6 < 2 * 4 * (D // 4)  # far below a full KV cache


def test_mla_params_follow_deepseek_v2():
    d, dr, r, H = 12, 6, 16, 4
    m = mmeff.create_mixer("mla", D, num_heads=H, kv_lora_rank=r, rope_head_dim=dr, q_lora_rank=24)
    expected = (D * 24 + 24 + 24 * H * (d + dr)      # W_dq, q norm, W_uq (+ W_qr)
                + D * (r + dr) + r                   # W_dkv + W_kr, kv norm
                + r * H * (d + d)                    # W_uk, W_uv
                + H * d * D)                         # W_o
    assert sum(p.numel() for p in m.parameters()) == expected


def test_mla_bidirectional_grid_and_errors():
    m = mmeff.create_mixer("mla", D, num_heads=4, causal=False, rope="2d", grid=(3, 4))
    x = torch.randn(2, 12, D, requires_grad=True)
    m(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(RuntimeError, match="causal"):
        m.step(x, None)
    with pytest.raises(ValueError, match="rope"):
        mmeff.create_mixer("mla", D, rope=None)
    with pytest.raises(ValueError, match="kv_lora_rank"):
        mmeff.create_mixer("mla", D, kv_lora_rank=0)
