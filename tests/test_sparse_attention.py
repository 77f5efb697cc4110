"""Sparse / local attention: every pattern's fast path against dense SDPA with the explicit mask
(outputs and gradients), pattern semantics against independent brute force, errors, and mixers."""
import math

import pytest
import torch
from timm.models.swin_transformer import WindowAttention as TimmWindowAttention

import mmeff
from mmeff.ops import last_backend
from mmeff.ops import sparse_attention as sa
from mmeff.ops._dispatch import force_backend
from mmeff.ops.sparse_attention import patterns
from mmeff.ops.sparse_attention.naive import naive_attention, pattern_mask
from mmeff.testing import assert_close, assert_grads_close, grads, random_splits, run_in_chunks


def _qkv(T, S=None, B=2, H=4, Hk=2, D=60, dtype=torch.float32, device="cpu"):
    S = T if S is None else S
    return (torch.randn(B, T, H, D, dtype=dtype, device=device), torch.randn(B, S, Hk, D, dtype=dtype, device=device),
            torch.randn(B, S, Hk, D, dtype=dtype, device=device))


def _fast_vs_naive(name, fn, q, k, v, extra=(), ratio=1e-5, backend="chunk"):
    """``fn(q, k, v, *extra)`` on ``backend`` vs the dense reference: output and all gradients."""
    leaves = [[t.clone().requires_grad_() for t in (q, k, v, *extra)] for _ in range(2)]
    with force_backend("naive"):
        ref = fn(*leaves[0])
    with force_backend(backend):
        out = fn(*leaves[1])
    assert_close(name, out.float(), ref.float(), ratio)
    assert_grads_close(name, grads([out.float()], leaves[1]), grads([ref.float()], leaves[0]), ratio)


# ----------------------------------------------------------------------------- patterns vs dense

@pytest.mark.parametrize("T,S", [(63, 63), (75, 75), (1, 40), (17, 75)])
@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window(T, S, causal):
    if not causal and T != S:
        pytest.skip("bidirectional attention needs S == T")
    q, k, v = _qkv(T, S)
    for window in (2, 9, 100):
        _fast_vs_naive(f"sw{window}", lambda q, k, v: sa.sliding_window_attention(
            q, k, v, window, causal, block_size=8), q, k, v)
    assert last_backend("sliding_window_attention") == "chunk"


@pytest.mark.parametrize("causal", [True, False])
def test_block_sparse(causal):
    q, k, v = _qkv(75, D=100)
    for local, glob, stride in [(0, 0, 0), (1, 5, 0), (1, 0, 3), (2, 11, 4)]:
        _fast_vs_naive(f"bs{local},{glob},{stride}", lambda q, k, v: sa.block_sparse_attention(
            q, k, v, 8, local, glob, stride, causal), q, k, v)
    q, k, v = _qkv(10, 75)  # a chunk against its cache
    _fast_vs_naive("bs chunk", lambda q, k, v: sa.block_sparse_attention(q, k, v, 8, 1, 3, 2, True), q, k, v)


@pytest.mark.parametrize("grid,kernel,dilation,causal", [
    ((7, 9), 3, 1, False), ((8, 9), (3, 5), (2, 1), False), ((4, 5, 6), (2, 3, 3), (1, 1, 2), (True, False, False)),
    ((4, 5, 6), 3, 1, True)])
def test_neighborhood(grid, kernel, dilation, causal):
    q, k, v = _qkv(math.prod(grid))
    _fast_vs_naive("na", lambda q, k, v: sa.neighborhood_attention(q, k, v, grid, kernel, dilation, causal,
                                                                   block_size=16), q, k, v)


def test_neighborhood_streams_with_trimmed_keys():
    grid, kernel = (5, 3, 4), (2, 2, 3)
    q, k, v = _qkv(60)
    full = sa.neighborhood_attention(q, k, v, grid, kernel, causal=True)
    start = 24  # keys from frame 2 on are enough for frames 3 and 4
    part = sa.neighborhood_attention(q[:, 40:], k[:, start:], v[:, start:], grid, kernel, causal=True,
                                     k_start=start)
    assert_close("na stream", part, full[:, 40:], 1e-5)


def test_window_attention():
    for grid, window, shift in [((8, 12), (4, 6), (2, 3)), ((4, 8, 8), (2, 4, 4), (1, 2, 2)), ((8, 8), 4, 0)]:
        q, k, v = _qkv(math.prod(grid))
        wn = math.prod(window) if isinstance(window, tuple) else window ** 2
        bias = torch.randn(4, wn, wn)
        _fast_vs_naive(f"win{grid}", lambda q, k, v, b: sa.window_attention(q, k, v, grid, window, shift, b),
                       q, k, v, extra=(bias,))


@pytest.mark.parametrize("causal", [True, False])
def test_moba(causal):
    q, k, v = _qkv(75, D=100)
    _fast_vs_naive("moba", lambda q, k, v: sa.moba_attention(q, k, v, 8, 3, causal), q, k, v)
    if causal:
        q, k, v = _qkv(11, 75)
        _fast_vs_naive("moba chunk", lambda q, k, v: sa.moba_attention(q, k, v, 16, 2, True), q, k, v)


def test_selected_and_compressed_attention():
    q, k, v = _qkv(75)
    kc, vc = torch.randn(2, (75 - 8) // 4 + 1, 2, 60), torch.randn(2, (75 - 8) // 4 + 1, 2, 60)
    for causal in (True, False):
        _fast_vs_naive("cmp", lambda q, k, v: sa.compressed_attention(q, k, v, 8, 4, causal=causal, tile=16),
                       q, kc, vc)
    idx = sa.nsa_select(q, kc, 75, 8, 4, 16, 3)
    assert idx.shape == (2, 2, 75, 3)
    _fast_vs_naive("sel", lambda q, k, v: sa.selected_attention(q, k, v, idx, 16), q, k, v)


def test_bf16_gather_close_to_fp32_reference():
    q, k, v = _qkv(75, dtype=torch.bfloat16)
    _fast_vs_naive("sw bf16", lambda q, k, v: sa.sliding_window_attention(q, k, v, 20), q, k, v, ratio=2e-2)
    out = sa.moba_attention(q, k, v, 16, 2)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def _block_mask_attention(q, k, v, block_mask=None, scale=None, return_lse=False, enable_gqa=False):
    """Dense stand-in for the FlexAttention kernel: the mask_mod on the BlockMask's partial tiles,
    every pair of its full tiles, softmax, output and log-sum-exp; it also checks that the q-side
    tile lists are the kv-side ones transposed (the backward kernel walks those)."""
    B, H, Lq, D = q.shape
    k, v = (t.repeat_interleave(H // k.shape[1], 1) for t in (k, v))
    Lk, bm, tile = k.shape[2], block_mask, 128
    nq, nk = -(-Lq // tile), -(-Lk // tile)

    def dense(num, idx, rows, cols):
        m = torch.zeros(rows, cols, dtype=torch.bool)
        if num is not None:
            for t in range(rows):
                m[t, idx[0, 0, t, :int(num[0, 0, t])].long()] = True
        return m

    part = dense(bm.kv_num_blocks, bm.kv_indices, nq, nk)
    full = dense(bm.full_kv_num_blocks, bm.full_kv_indices, nq, nk)
    assert torch.equal(dense(bm.q_num_blocks, bm.q_indices, nk, nq), part.t())
    assert torch.equal(dense(bm.full_q_num_blocks, bm.full_q_indices, nk, nq), full.t())
    spread = lambda m: m.repeat_interleave(tile, 0).repeat_interleave(tile, 1)[:Lq, :Lk]  # noqa: E731
    rule = bm.mask_mod(0, 0, torch.arange(Lq)[:, None], torch.arange(Lk)[None, :])
    allowed = (rule & spread(part)) | spread(full)
    s = (q.float() @ k.float().transpose(-1, -2) * (scale or D ** -0.5)).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    o = (torch.exp(s - lse[..., None]).nan_to_num(0.0) @ v.float()).to(q.dtype)
    return (o, lse) if return_lse else o


@pytest.mark.parametrize("T,S,H,Hk,block,top_k", [(200, 333, 4, 2, 48, 4), (256, 256, 2, 1, 128, 2),
                                                  (130, 500, 4, 1, 100, 3), (256, 256, 2, 2, 256, 1)])
def test_flex_selected_tiles_and_merge(monkeypatch, T, S, H, Hk, block, top_k):
    """The CUDA path of per-token selections (pairs sorted by key block, own blocks apart, merge by
    log-sum-exp) on CPU, with the kernel replaced by a dense evaluation of its BlockMask."""
    from mmeff.ops.sparse_attention import flex, select
    monkeypatch.setattr(flex, "_flex", lambda: _block_mask_attention)
    q, k, v = _qkv(T, S=S, H=H, Hk=Hk, D=32)
    for causal in (True, False) if T == S else (True,):
        p = patterns.selected(select.moba_select(q, k, block, top_k, causal), block, causal, S - T)
        assert_close("moba", flex._selected(q, k, v, p, None), naive_attention(q, k, v, p, None), 1e-5)
    idx = torch.randint(0, -(-S // block), (2, Hk, T, 4)).sort(-1).values  # earlier, own and later blocks
    idx = torch.where(idx[..., 1:] == idx[..., :-1], -1, idx[..., 1:])
    p = patterns.selected(idx, block, True, S - T)
    assert_close("selected", flex._selected(q, k, v, p, None), naive_attention(q, k, v, p, None), 1e-5)


@pytest.mark.cuda
def test_flex_path_matches_reference():
    dev = "cuda"
    q, k, v = _qkv(300, D=64, device=dev)
    _fast_vs_naive("flex sw", lambda q, k, v: sa.sliding_window_attention(q, k, v, 37), q, k, v,
                   ratio=2e-3, backend="triton")
    from mmeff.ops.sparse_attention import flex
    cached = len(flex._MASKS)
    with force_backend("triton"):  # the same pattern again: its block mask is reused, not rebuilt
        again = sa.sliding_window_attention(q, k, v, 37)
        assert len(flex._MASKS) == cached
        assert torch.equal(again, sa.sliding_window_attention(q, k, v, 37))
        sa.sliding_window_attention(q, k, v, 38)  # other numbers: another mask
        assert len(flex._MASKS) == cached + 1
    _fast_vs_naive("flex moba", lambda q, k, v: sa.moba_attention(q, k, v, 32, 3), q, k, v,
                   ratio=2e-3, backend="triton")
    # per-token selections run key-block-centric: blocks not a multiple of the 128-key tile, a
    # chunk of queries against a longer cache, selections shared by a GQA group (NSA), bf16
    q, k, v = _qkv(200, S=333, D=64, device=dev)
    _fast_vs_naive("flex moba cache", lambda q, k, v: sa.moba_attention(q, k, v, 48, 4), q, k, v,
                   ratio=2e-3, backend="triton")
    idx = torch.randint(0, 7, (2, 2, 200, 3), device=dev).sort(-1).values
    idx = torch.where(idx[..., 1:] == idx[..., :-1], -1, idx[..., 1:])  # distinct or -1
    _fast_vs_naive("flex selected", lambda q, k, v: sa.selected_attention(q, k, v, idx, 48), q, k, v,
                   ratio=2e-3, backend="triton")
    q, k, v = _qkv(300, D=64, dtype=torch.bfloat16, device=dev)
    _fast_vs_naive("flex moba bf16", lambda q, k, v: sa.moba_attention(q, k, v, 64, 3), q, k, v,
                   ratio=2e-2, backend="triton")
    q, k, v = _qkv(300, D=64, device=dev)
    _fast_vs_naive("flex na", lambda q, k, v: sa.neighborhood_attention(q, k, v, (15, 20), (3, 5), (2, 3)),
                   q, k, v, ratio=2e-3, backend="triton")


# ----------------------------------------------------------------------------- semantics

def _natten_start(i, n, k, d):
    """NATTEN's window start (odd k), written from its published definition."""
    ns = k // 2
    if d <= 1:
        return max(i - ns, 0) + (i + ns >= n) * (n - i - ns - 1)
    if i - ns * d < 0:
        return i % d
    if i + ns * d >= n:
        imodd, a = i % d, (n // d) * d
        b = n - a
        return n - b + imodd - 2 * ns * d if imodd < b else a + imodd - k * d
    return i - ns * d


@pytest.mark.parametrize("n,k,d", [(9, 3, 1), (10, 5, 2), (11, 3, 3), (7, 7, 1)])
def test_neighborhood_matches_natten_windows(n, k, d):
    mask = pattern_mask(patterns.neighborhood(n * 2, n * 2, (2, n), (1, k), (1, d), (False, False), 4),
                        n * 2, n * 2, "cpu")[:n, :n]  # row 0 of the grid: a 1D neighborhood
    for i in range(n):
        s = _natten_start(i, n, k, d)
        assert mask[i].nonzero().flatten().tolist() == list(range(s, s + k * d, d))


def test_neighborhood_sees_exactly_kernel_keys():
    grid = (6, 7, 8)
    pat = patterns.neighborhood(336, 336, grid, (3, 5, 3), (1, 1, 2), (False,) * 3, 32)
    assert (pattern_mask(pat, 336, 336, "cpu").sum(-1) == 45).all()


def test_window_mask_equals_swin_roll_and_regions():
    H, W, w, s = 8, 12, 4, 2
    # Swin: label regions of the rolled image, then tokens attend within a window and a region
    img = torch.zeros(H, W, dtype=torch.long)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img[hs, ws] = cnt
            cnt += 1
    rolled = torch.arange(H * W).view(H, W).roll((-s, -s), (0, 1))  # original index at each rolled site
    win = (torch.arange(H)[:, None] // w) * (W // w) + torch.arange(W)[None, :] // w
    key = torch.empty(H * W, 2, dtype=torch.long)
    key[rolled.flatten(), 0], key[rolled.flatten(), 1] = win.flatten(), img.flatten()
    swin = (key[:, None] == key[None, :]).all(-1)
    coords = patterns.unravel(torch.arange(H * W), (H, W))
    gid, _ = patterns.window_groups(coords, (w, w), (s, s))
    ours = torch.stack([g[:, None] == g[None, :] for g in gid]).all(0)
    assert torch.equal(ours, swin)


def test_moba_selection_is_brute_force_top_k():
    q, k, _ = _qkv(40, H=2, Hk=1, D=8)
    idx = sa.moba_select(q, k, 8, 3)
    for b, h, t in [(0, 0, 3), (1, 1, 20), (0, 1, 39), (1, 0, 31)]:
        cur = t // 8
        scores = {m: (q[b, t, h] @ k[b, m * 8:m * 8 + 8, 0].mean(0)).item() for m in range(cur)}
        want = {cur} | set(sorted(scores, key=scores.get, reverse=True)[:2])
        assert set(idx[b, h, t].tolist()) - {-1} == want


def test_nsa_selection_forced_and_causal():
    q, k, _ = _qkv(100, D=8)
    kc = torch.randn(2, (100 - 8) // 4 + 1, 2, 8)
    idx = sa.nsa_select(q, kc, 100, 8, 4, 16, 4, num_init=1, num_local=2)
    t = torch.arange(100)
    cur = (t // 16)[None, None, :, None]
    chosen = torch.where(idx >= 0, idx, -100)
    assert (chosen <= cur).all()  # never a future block
    for forced in (torch.zeros_like(cur), cur, (cur - 1).clamp(min=0)):
        assert (chosen == forced).any(-1).all()
    assert ((idx >= 0).sum(-1) == torch.minimum(t // 16 + 1, torch.tensor(4))).all()


# ----------------------------------------------------------------------------- errors

def test_bad_configs_are_clear_errors():
    q, k, v = _qkv(24)
    with pytest.raises(ValueError, match="window"):
        sa.sliding_window_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="top_k"):
        sa.moba_attention(q, k, v, 8, 4)
    with pytest.raises(ValueError, match="window_size"):
        sa.window_attention(q, k, v, (4, 6), (4, 4))
    with pytest.raises(ValueError, match="shift_size"):
        sa.window_attention(q, k, v, (4, 6), 2, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        sa.neighborhood_attention(q, k, v, (4, 6), 3, 2)
    with pytest.raises(ValueError, match="grid"):
        sa.neighborhood_attention(q, k, v, (5, 6), 3)
    with pytest.raises(ValueError, match="divisible"):
        sa.sliding_window_attention(q, k[:, :, :1].expand(-1, -1, 3, -1), v[:, :, :1].expand(-1, -1, 3, -1), 4)
    with pytest.raises(ValueError, match="S == T"):
        sa.sliding_window_attention(q, k[:, :20], v[:, :20], 4, causal=False)
    with pytest.raises(ValueError, match="block_indices"):
        sa.selected_attention(q, k, v, torch.zeros(2, 3, 24, 1, dtype=torch.long), 8)
    with pytest.raises(ValueError, match="num_local_blocks"):
        mmeff.create_mixer("block_sparse", 32, num_local_blocks=-1)
    with pytest.raises(ValueError, match="causal"):
        mmeff.create_mixer("window", 32, causal=True)
    with pytest.raises(ValueError, match="num_select"):
        mmeff.create_mixer("nsa", 32, num_select=2)
    with pytest.raises(ValueError, match="compress_block"):
        mmeff.create_mixer("nsa", 32, compress_block=30)


# ----------------------------------------------------------------------------- mixers

CAUSAL_MIXERS = [
    ("sliding_window", dict(window=7, block_size=8, rope="1d", num_kv_heads=2), 37),
    ("block_sparse", dict(block_size=8, num_global_tokens=3, stride=3), 37),
    ("moba", dict(block_size=8, top_k=3, num_kv_heads=1, rope="1d"), 37),
    ("nsa", dict(num_kv_heads=2, compress_block=8, compress_stride=4, select_block=8, num_select=4,
                 window=9, rope="1d"), 37),
    ("neighborhood", dict(grid=(3, 4, 5), kernel_size=(2, 3, 3), causal=True), 60),
]


@pytest.mark.parametrize("name,kw,L", CAUSAL_MIXERS, ids=[c[0] for c in CAUSAL_MIXERS])
def test_sparse_mixer_step_equals_forward(name, kw, L):
    m = mmeff.create_mixer(name, 32, num_heads=4, **kw).eval()
    x = torch.randn(2, L, 32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        full = m(x)
        for _ in range(2):
            y, _ = run_in_chunks(m.step, x, m.init_state(2), random_splits(L, gen))
            assert_close(f"{name} step", y, full, 1e-5)
    xg = x.clone().requires_grad_()
    m.train()(xg).square().mean().backward()
    assert torch.isfinite(xg.grad).all()
    bidir = mmeff.create_mixer(name, 32, num_heads=4, **{**kw, "causal": False})
    assert bidir(x).shape == x.shape
    with pytest.raises(RuntimeError, match="causal"):
        bidir.step(x, None)


def test_bounded_caches():
    sw = mmeff.create_mixer("sliding_window", 32, num_heads=4, window=5).eval()
    state = sw.init_state(1)
    with torch.no_grad():
        for n in (1, 3, 7, 2, 9):
            _, state = sw.step(torch.randn(1, n, 32), state)
            assert state["k"].shape[1] <= 5 and state["v"].shape[1] <= 5
    na = mmeff.create_mixer("neighborhood", 32, num_heads=4, grid=(9, 2, 3), kernel_size=(2, 1, 3),
                            causal=True).eval()
    state = na.init_state(1)
    with torch.no_grad():
        for _ in range(9):
            _, state = na.step(torch.randn(1, 5, 32), state)
            assert state["k"].shape[1] <= 2 * 6 + 5  # two frames + the chunk
    nsa = mmeff.create_mixer("nsa", 32, num_heads=4, compress_block=8, compress_stride=4, select_block=8,
                             num_select=3, window=6).eval()
    state = nsa.init_state(1)
    with torch.no_grad():
        for n in (5, 11, 3):
            _, state = nsa.step(torch.randn(1, n, 32), state)
            assert state["k_win"].shape[1] <= 5 and state["k_tail"].shape[1] < 8
    assert state["k_cmp"].shape[1] == (19 - 8) // 4 + 1


def test_window_mixer_grid_shift_and_params():
    m = mmeff.create_mixer("window", 32, num_heads=4, window_size=(2, 3), shift_size=(1, 1))
    ref = TimmWindowAttention(32, 4, window_size=(2, 3))
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in ref.parameters())
    x = torch.randn(2, 24, 32, requires_grad=True)
    with pytest.raises(ValueError, match="grid"):
        m(x)
    y = m(x, grid=(4, 6))
    y.sum().backward()
    assert m.relative_position_bias_table.grad.abs().sum() > 0
    m.set_grid((4, 6))
    torch.testing.assert_close(m(x), y)
    with pytest.raises(ValueError, match="window_size"):
        m(torch.randn(2, 25, 32), grid=(5, 5))
    video = mmeff.create_mixer("window", 32, num_heads=4, grid=(2, 4, 4), window_size=2, shift_size=1)
    assert video(torch.randn(1, 32, 32)).shape == (1, 32, 32)


def test_neighborhood_mixer_grid_per_call():
    m = mmeff.create_mixer("neighborhood", 32, num_heads=4, kernel_size=3, dilation=(1, 2), rope="2d")
    for grid in ((4, 6), (5, 7)):
        x = torch.randn(1, math.prod(grid), 32)
        assert m(x, grid=grid).shape == x.shape
    with pytest.raises(ValueError, match="grid"):
        m(torch.randn(1, 24, 32))
