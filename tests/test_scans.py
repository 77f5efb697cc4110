"""Scans (mmeff.scans): every ordering is a permutation with a working inverse, gather/merge round
trips, locality of the continuous curves, caching, ScannedMixer and its errors."""
import itertools

import pytest
import torch

import mmeff
from mmeff.scans import ScannedMixer, create_scan, hilbert_order, list_scans, locality
from mmeff.scans.base import _SCANS, register_scan, scan_ndim
from mmeff.testing import assert_close

GRIDS = {2: [(1, 1), (1, 7), (7, 1), (2, 2), (3, 3), (4, 6), (5, 7), (7, 5)],
         3: [(1, 1, 1), (3, 3, 5), (5, 3, 3), (1, 4, 6), (4, 1, 1), (2, 3, 4)]}
# every registered scan with default arguments, plus variants of the parametrised ones
VARIANTS = [(name, {}) for name in list_scans()] + [
    ("zigzag", dict(layer=3)), ("zigzag", dict(layer=11)),
    ("local", dict(window=(2, 3), flip=True)), ("local", dict(window=7)),
    ("atrous", dict(stride=3)), ("atrous", dict(stride=2, cross=True)),
    ("tube_local", dict(window=(2, 2, 3), flip=True)), ("tube_local", dict(window=1))]
# continuous scans: each step goes to a neighbouring cell on every grid
CONTINUOUS = ["snake", "snake4", "zigzag", "hilbert", "snake3d", "hilbert3d"]


def _steps(path, grid):
    """Euclidean lengths of the steps along ``path [K, N]``."""
    coords = torch.stack(torch.unravel_index(path, grid), dim=-1).double()  # [K, N, ndim]
    return (coords[:, 1:] - coords[:, :-1]).norm(dim=-1)


@pytest.mark.parametrize("name,kw", VARIANTS, ids=[f"{n}{kw or ''}" for n, kw in VARIANTS])
def test_scan_contract(name, kw):
    for grid in GRIDS[scan_ndim(name)]:
        scan = create_scan(name, grid, **kw)
        K, N = scan.paths.shape
        ar = torch.arange(N).expand(K, N)
        assert scan.paths.dtype == torch.long and N == torch.Size(grid).numel()
        assert torch.equal(scan.paths.sort(dim=1).values, ar), (name, grid)
        assert torch.equal(scan.paths.gather(1, scan.inverse), ar)
        assert torch.equal(scan.inverse.gather(1, scan.paths), ar)
        x = torch.randn(2, N, 3)
        xs = scan.gather(x)
        assert torch.equal(xs.view(2, K, N, 3), x[:, scan.paths])  # path k of sample b at b*K + k
        assert_close("mean merge", scan.merge(xs), x, 1e-6)
        assert_close("sum merge", scan.merge(xs, "sum"), K * x, 1e-6)


def test_all_scans_covered_and_public():
    assert {n for n, _ in VARIANTS} == set(list_scans()) == set(mmeff.list_scans())
    assert mmeff.create_scan is create_scan
    assert list_scans("snake*") == ["snake", "snake3d", "snake4"]


def test_orders_by_definition():
    def path(name, grid, **kw):
        return create_scan(name, grid, **kw).paths.tolist()

    assert path("raster", (2, 3)) == [[0, 1, 2, 3, 4, 5]]
    assert path("reversed", (2, 3)) == [[5, 4, 3, 2, 1, 0]]
    assert path("column", (2, 3)) == [[0, 3, 1, 4, 2, 5]]
    assert path("cross", (2, 3)) == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5],
                                     [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    assert path("snake", (3, 2)) == [[0, 1, 3, 2, 4, 5]]
    assert path("snake4", (3, 2))[1] == [0, 2, 4, 5, 3, 1]
    assert path("local", (4, 4)) == [[0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]]
    assert path("local", (3, 3), window=2) == [[0, 1, 3, 4, 2, 5, 6, 7, 8]]  # smaller border tiles
    assert path("atrous", (4, 4)) == [[0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]]
    assert path("atrous", (4, 4), cross=True)[0][:8] == [0, 2, 8, 10, 1, 9, 3, 11]
    assert path("spatial_first", (2, 1, 3)) == [[0, 1, 2, 3, 4, 5]]
    assert path("temporal_first", (2, 1, 3)) == [[0, 3, 1, 4, 2, 5]]
    assert path("cross3d", (2, 1, 3))[3] == [5, 2, 4, 1, 3, 0]
    assert path("snake3d", (2, 2, 2)) == [[0, 1, 3, 2, 6, 7, 5, 4]]
    assert path("tube_local", (2, 2, 4), window=(2, 2, 2)) == [[0, 1, 4, 5, 8, 9, 12, 13,
                                                               2, 3, 6, 7, 10, 11, 14, 15]]


def test_zigzag_paths():
    all8 = create_scan("zigzag", (4, 6)).paths
    assert all8.shape == (8, 24) and len({tuple(p.tolist()) for p in all8}) == 8
    for layer in range(17):  # a layer index cycles through the 8 paths
        assert torch.equal(create_scan("zigzag", (4, 6), layer=layer).paths[0], all8[layer % 8])
    # square grids: the 8 paths are the dihedral images of the row snake
    sq = create_scan("zigzag", (5, 5)).paths
    idx = torch.arange(25).view(5, 5)
    images = {tuple(g.flatten()[sq[0]].tolist())
              for g in [idx.rot90(r) for r in range(4)] + [idx.t().rot90(r) for r in range(4)]}
    assert {tuple(p.tolist()) for p in sq} == images


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_scans_are_adjacent(name):
    grids = {2: [(1, 9), (9, 1), (2, 2), (5, 7), (7, 5), (6, 9), (15, 4), (4, 15), (14, 10),
                 (16, 16), (13, 11), (31, 17)],
             3: [(3, 3, 5), (2, 3, 3), (3, 2, 5), (5, 4, 3), (4, 4, 4), (1, 5, 7), (7, 5, 1),
                 (6, 7, 9), (8, 14, 14)]}[scan_ndim(name)]
    for grid in grids:
        steps = _steps(create_scan(name, grid).paths, grid)
        assert torch.all(steps == 1), (name, grid, steps.max().item())


def test_hilbert_all_small_sizes_adjacent_and_hilbert_on_powers_of_two():
    shapes = list(itertools.product(range(1, 13), repeat=2)) + list(itertools.product(range(1, 6),
                                                                                     repeat=3))
    for shape in shapes:
        order = torch.tensor(hilbert_order(shape))[None]
        assert torch.equal(order.sort().values[0], torch.arange(order.numel())), shape
        assert torch.all(_steps(order, shape) == 1), shape
    # on 2^k x 2^k every aligned 2^j block is visited contiguously, as by the classic curve
    pos = create_scan("hilbert", (16, 16)).inverse[0].view(16, 16)
    for j in (2, 4, 8):
        blocks = pos.unfold(0, j, j).unfold(1, j, j).reshape(-1, j * j)
        assert torch.all(blocks.max(1).values - blocks.min(1).values == j * j - 1)


@pytest.mark.parametrize("grid", [(16, 16), (14, 10)])
def test_locality_beats_raster(grid):
    raster = locality(create_scan("raster", grid).paths, grid)
    assert raster > 1.7
    for name in ("snake", "hilbert", "local"):
        assert locality(create_scan(name, grid).paths, grid) < raster - 0.2, name
    assert locality(create_scan("snake", grid).paths[0], grid) == 1.0
    grid3 = (4,) + grid
    spatial = locality(create_scan("spatial_first", grid3).paths, grid3)
    for name in ("snake3d", "hilbert3d", "tube_local"):
        assert locality(create_scan(name, grid3).paths, grid3) < spatial - 0.2, name


def test_cache_returns_same_objects():
    a = create_scan("local", (6, 5), window=2)
    assert create_scan("local", [6, 5], window=2) is a  # grid list or tuple, ...
    assert create_scan("local", (6, 5)) is a  # ... defaults filled in
    assert create_scan("local", (6, 5), window=(2, 2)) is not a  # a different key
    assert a.to("cpu") is a and a.paths_on("cpu") is a.paths
    meta = a.to("meta")  # another device: built once, then cached
    assert meta.paths.device.type == "meta" and a.to("meta") is meta
    assert create_scan("local", (6, 5), device="meta") is meta
    assert meta.to("cpu") is a


def _attention(dim=16):
    return mmeff.create_mixer("attention", dim, num_heads=2, causal=True)


def test_scanned_mixer_matches_manual_paths():
    grid, D = (3, 5), 16
    x = torch.randn(2, 15, D)
    attn = _attention(D)
    assert_close("raster", ScannedMixer(attn, "raster", grid)(x), attn(x), 1e-6)
    assert_close("reversed", ScannedMixer(attn, "reversed", grid)(x), attn(x.flip(1)).flip(1), 1e-6)
    paths = create_scan("cross", grid).paths
    manual = torch.stack([attn(x[:, p])[:, p.argsort()] for p in paths])  # [K, B, N, D]
    assert_close("cross mean", ScannedMixer(attn, "cross", grid)(x), manual.mean(0), 1e-6)
    assert_close("cross sum", ScannedMixer(attn, "cross", grid, merge="sum")(x), manual.sum(0), 1e-6)
    # causal attention along different orders gives different results: directions matter
    assert (manual[0] - manual[1]).abs().max() > 1e-3


@pytest.mark.parametrize("shared,merge", [(True, "mean"), (False, "mean"), (True, "gate"),
                                          (False, "gate"), (False, "sum")])
def test_scanned_mixer_shapes_and_grads(shared, merge):
    m = ScannedMixer("attention", "snake4", (4, 3), dim=16, shared=shared, merge=merge,
                     mixer_kwargs=dict(num_heads=2, causal=True))
    assert len(m.mixers) == (1 if shared else 4) and m.num_paths == 4
    x = torch.randn(2, 12, 16, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    if merge == "gate":
        assert m.gate.shape == (4,) and m.gate.grad.abs().sum() > 0


def test_scanned_mixer_separate_parameters():
    by_name = ScannedMixer("attention", "cross", (3, 3), dim=16, shared=False,
                           mixer_kwargs=dict(num_heads=2))
    w = [mx.qkv.weight for mx in by_name.mixers]
    assert all(not torch.equal(w[0], wk) for wk in w[1:])  # built K times: own initialisation
    attn = _attention()
    copies = ScannedMixer(attn, "cross", (3, 3), shared=False)
    assert copies.mixers[0] is attn
    ptrs = {mx.qkv.weight.data_ptr() for mx in copies.mixers}
    assert len(ptrs) == 4  # deep copies: separate tensors, equal at start ...
    opt = torch.optim.SGD(copies.parameters(), lr=0.1)
    copies(torch.randn(2, 9, 16)).square().sum().backward()
    opt.step()
    w = [mx.qkv.weight for mx in copies.mixers]
    assert all(not torch.equal(w[0], wk) for wk in w[1:])  # ... and trained apart
    assert sum(p.numel() for p in copies.parameters()) == 4 * sum(p.numel() for p in attn.parameters())


@pytest.mark.parametrize("per_channel", [False, True])
def test_scanned_mixer_gate_is_learnable(per_channel):
    attn = _attention()
    m = ScannedMixer(attn, "cross", (3, 4), merge="gate", gate_per_channel=per_channel)
    mean = ScannedMixer(attn, "cross", (3, 4))
    assert m.gate.shape == ((4, 16) if per_channel else (4,))
    x = torch.randn(2, 12, 16)
    assert_close("uniform gate = mean", m(x), mean(x), 1e-6)
    opt = torch.optim.SGD([m.gate], lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        (m(x) - x).square().mean().backward()
        opt.step()
    assert m.gate.abs().max() > 0 and (m(x) - mean(x)).abs().max() > 1e-4


def test_scanned_mixer_grid_at_forward():
    m = ScannedMixer(_attention(), "hilbert", (4, 4), shared=False, merge="gate")
    assert m(torch.randn(1, 16, 16)).shape == (1, 16, 16)
    y = m(torch.randn(2, 35, 16), grid=(5, 7))
    assert y.shape == (2, 35, 16)
    scan = create_scan("tube_local", (2, 3, 4), window=(1, 2, 2))
    v = ScannedMixer(_attention(), scan)
    assert v.grid == (2, 3, 4) and v.scan_kwargs == scan.kwargs
    assert v(torch.randn(1, 3 * 2 * 2, 16), grid=(3, 2, 2)).shape == (1, 12, 16)
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.randn(2, 35, 16))  # default grid (4, 4) has 16 tokens
    with pytest.raises(ValueError, match=r"grid must be \(H, W\)"):
        m(torch.randn(1, 16, 16), grid=(2, 2, 4))


def test_scanned_mixer_path_count_change_is_an_error(monkeypatch):
    def one_path_per_row(grid):  # a scan whose K (= H) depends on the grid
        return torch.stack([torch.arange(grid[0] * grid[1]).roll(r) for r in range(grid[0])])

    monkeypatch.setitem(_SCANS, "rows_test", (one_path_per_row, 2))
    m = ScannedMixer(_attention(), "rows_test", (2, 3), shared=False)
    with pytest.raises(ValueError, match="gives 3 paths .* for 2"):
        m(torch.randn(1, 9, 16), grid=(3, 3))
    ScannedMixer(_attention(), "rows_test", (2, 3))(torch.randn(1, 9, 16), grid=(3, 3))  # shared: ok


def test_errors():
    with pytest.raises(ValueError, match="unknown scan 'hilbrt'; did you mean hilbert"):
        create_scan("hilbrt", (4, 4))
    with pytest.raises(ValueError, match="sizes must be positive, got"):
        create_scan("raster", (0, 3))
    with pytest.raises(ValueError, match=r"\(2 sizes\), got 3 sizes"):
        create_scan("raster", (2, 3, 4))
    with pytest.raises(ValueError, match=r"\(T, H, W\) \(3 sizes\), got 2 sizes"):
        create_scan("hilbert3d", (3, 4))
    with pytest.raises(ValueError, match="positive int sizes, got"):
        create_scan("snake", (2.5, 3))
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['size'\]; valid: \['window', 'fl"):
        create_scan("local", (4, 4), size=2)
    with pytest.raises(ValueError, match="window must be a positive int or 2 positive ints, got"):
        create_scan("local", (4, 4), window=(2, 0))
    with pytest.raises(ValueError, match="stride must be an int > 0, got 0"):
        create_scan("atrous", (4, 4), stride=0)
    with pytest.raises(ValueError, match="layer must be an int >= 0, got -1"):
        create_scan("zigzag", (4, 4), layer=-1)
    scan = create_scan("cross", (3, 4))
    with pytest.raises(ValueError, match=r"x must have shape \[B, 12, D\] .* got \(2, 13, 8\)"):
        scan.gather(torch.randn(2, 13, 8))
    with pytest.raises(ValueError, match=r"y must have shape \[B\*4, 12, D\] .* got \(6, 12, 8\)"):
        scan.merge(torch.randn(6, 12, 8))
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'sum', got 'max'"):
        scan.merge(torch.randn(4, 12, 8), "max")
    with pytest.raises(ValueError, match=r"weights must have shape \[4\] or \[4, 8\], got \(3,\)"):
        scan.merge(torch.randn(4, 12, 8), weights=torch.ones(3))
    with pytest.raises(ValueError, match="path must list the 12 tokens"):
        locality(torch.arange(10), (3, 4))
    with pytest.raises(ValueError, match="merge must be one of"):
        ScannedMixer(_attention(), "cross", (3, 4), merge="max")
    with pytest.raises(ValueError, match="dim must be given"):
        ScannedMixer("attention", "cross", (3, 4))
    with pytest.raises(ValueError, match="grid must be given"):
        ScannedMixer(_attention(), "cross")
    with pytest.raises(ValueError, match="scan_kwargs must be empty"):
        ScannedMixer(_attention(), scan, scan_kwargs=dict(window=2))
    with pytest.raises(ValueError, match=r"expects x of shape \[B, L, 16\]"):
        ScannedMixer(_attention(), "cross", (3, 4))(torch.randn(1, 12, 8))
    with pytest.raises(RuntimeError, match="causal"):
        ScannedMixer(_attention(), "cross", (3, 4)).step(torch.randn(1, 12, 16), None)
    with pytest.raises(ValueError, match="already registered"):
        register_scan("raster", 2)(lambda grid: None)
