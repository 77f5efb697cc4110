"""``shapes``: generated scenes of coloured shapes on a textured background (no download).

Each image holds 1 to ``max_shapes`` shapes (circle, square, triangle, star, cross), each with a
colour, a size (small / large), a position and a rotation, on a smooth random background with
stripes and pixel noise. The largest shape is the *main* one (drawn last, never occluded). Targets:
``'shape'`` (main shape's class, default), ``'color'`` (main shape's colour) or ``'count'``
(number of shapes). Every sample also gets a scene caption such as
"a large red circle left of a small blue square".

A sample is a function of ``(seed, split, index)`` only (see ``base.sample_rng``): deterministic,
independent of ``num_samples`` and of the access order, different across splits. Scenes are drawn
per index and rasterised in batches (``__getitems__``, which ``DataLoader`` calls with a batch of
indices) with pure torch: per-shape signed distances on a pixel grid, anti-aliased by a one-pixel
ramp (the 2D distance functions of https://iquilezles.org/articles/distfunctions2d/).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset

from .base import check_choice, check_index, check_positive, register_dataset, sample_rng

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLORS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.60, 0.15, 0.80),
    "white": (0.95, 0.95, 0.95),
}
COUNT_WORDS = ("one", "two", "three", "four", "five")
TARGETS = ("shape", "color", "count")
DEFAULT_NUM_SAMPLES = {"train": 2000, "val": 500, "test": 500}
LARGE = 0.15          # radius / img_size from which a shape is called "large"
BLOB_GRID = 4         # the smooth background is bilinear colour noise on a 4 x 4 grid
RENDER_CHUNK = 64     # images rasterised at once (bounds the memory of a big __getitems__)


@dataclass
class Shape:
    """One shape; lengths in pixels, ``(x, y)`` its centre, ``angle`` in radians, ``tint`` an RGB
    offset added to the colour."""
    kind: str
    color: str
    radius: float
    x: float
    y: float
    angle: float = 0.0
    tint: Tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class Scene:
    """Shapes in drawing order (the main one last) and the background's parameters."""
    shapes: List[Shape]
    base: Tuple[float, float, float] = (0.2, 0.2, 0.2)    # background RGB
    blobs: List[float] = field(default_factory=lambda: [0.0] * (3 * BLOB_GRID ** 2))
    stripes: Tuple[float, float, float] = (0.0, 0.0, 0.0)  # angle, frequency (rad/pixel), amplitude
    noise_seed: int = 0                                     # seed of the per-pixel noise


def _distance(kind: str, p: Dict[str, torch.Tensor], yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """Signed distance-like fields in pixels (negative inside) of M shapes of one ``kind``.

    Args:
        p: 'x', 'y', 'radius', 'angle', each [M, 1, 1].
        yy, xx: pixel-centre coordinates [H, W].
    Returns:
        [M, H, W]
    """
    c, s, r = torch.cos(p["angle"]), torch.sin(p["angle"]), p["radius"]
    dx, dy = xx - p["x"], yy - p["y"]
    u, v = c * dx + s * dy, c * dy - s * dx           # shape-local coordinates, [M, H, W]
    if kind == "circle":
        return torch.sqrt(u * u + v * v) - r
    if kind == "square":
        return torch.maximum(u.abs(), v.abs()) - 0.8 * r
    if kind == "triangle":                             # equilateral, inradius 0.55 r
        faces = [u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, math.pi * 7 / 6, -math.pi / 6)]
        return torch.stack(faces).amax(0) - 0.55 * r
    if kind == "star":                                 # 5 tips at r, notches at 0.45 r
        t = torch.remainder(torch.atan2(v, u) * (5 / (2 * math.pi)), 1.0)
        return torch.sqrt(u * u + v * v) - r * (0.45 + 0.55 * (2 * t - 1).abs())
    if kind == "cross":                                # two bars of half-width 0.3 r
        w = 0.3 * r
        bar_h = torch.maximum(u.abs() - r, v.abs() - w)
        bar_v = torch.maximum(u.abs() - w, v.abs() - r)
        return torch.minimum(bar_h, bar_v)
    raise ValueError(f"kind: expected one of {list(SHAPES)}, got {kind!r}")


def _floats(rows) -> torch.Tensor:
    """float32 tensor of (nested lists of) Python numbers, ints included."""
    return torch.tensor(rows, dtype=torch.float32)


def render_scenes(scenes: Sequence[Scene], img_size: int, noise: float = 0.03) -> torch.Tensor:
    """Rasterise a batch of scenes (all shapes of a kind at once).

    Returns:
        Images in [0, 1], float32 [B, 3, H, W].
    """
    B, H = len(scenes), img_size
    K = max(len(s.shapes) for s in scenes)
    ax = torch.arange(H, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")                        # [H, W]
    # background: base colour + smooth colour blobs + stripes
    base = _floats([s.base for s in scenes])[:, :, None, None]       # [B, 3, 1, 1]
    blobs = rearrange(_floats([s.blobs for s in scenes]), "b (c h w) -> b c h w",
                      c=3, h=BLOB_GRID)
    blobs = F.interpolate(blobs, size=(H, H), mode="bilinear", align_corners=False)
    phi, freq, amp = (t[:, None, None] for t in _floats([s.stripes for s in scenes]).unbind(1))
    stripes = amp * torch.sin((xx * torch.cos(phi) + yy * torch.sin(phi)) * freq)   # [B, H, W]
    img = base + blobs + stripes[:, None]                                 # [B, 3, H, W]
    # shapes: slot k of K, right-aligned so that every scene's main shape is in the last slot
    slots = [(b, K - len(s.shapes) + j, sh)                               # (image, slot, shape)
             for b, s in enumerate(scenes) for j, sh in enumerate(s.shapes)]
    alpha = torch.zeros(B, K, H, H)
    colour = torch.zeros(B, K, 3)
    centre_y, radius = torch.zeros(B, K), torch.ones(B, K)
    for kind in SHAPES:
        sel = [(b, k, sh) for b, k, sh in slots if sh.kind == kind]
        if not sel:
            continue
        p = {a: _floats([getattr(sh, a) for _, _, sh in sel])[:, None, None]
             for a in ("x", "y", "radius", "angle")}
        bs, ks = torch.tensor([b for b, _, _ in sel]), torch.tensor([k for _, k, _ in sel])
        alpha[bs, ks] = (0.5 - _distance(kind, p, yy, xx)).clamp(0.0, 1.0)   # 1-pixel ramp
        colour[bs, ks] = (_floats([COLORS[sh.color] for _, _, sh in sel])
                          + _floats([sh.tint for _, _, sh in sel])).clamp(0, 1)
        centre_y[bs, ks], radius[bs, ks] = p["y"].flatten(), p["radius"].flatten()
    shade = 1.0 + 0.12 * (yy - centre_y[..., None, None]) / radius[..., None, None]   # [B, K, H, W]
    for k in range(K):                                                    # paint in drawing order
        paint = colour[:, k, :, None, None] * shade[:, k, None]           # [B, 3, H, W]
        img = torch.lerp(img, paint, alpha[:, k, None])
    # per-pixel noise: uniform with std `noise` (cheaper to draw than Gaussian)
    gens = [torch.Generator().manual_seed(s.noise_seed) for s in scenes]
    img = img + (noise * 12 ** 0.5) * (torch.stack([torch.rand(3, H, H, generator=g) for g in gens]) - 0.5)
    return img.clamp(0.0, 1.0)


def _relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b`` (image y points down)."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _place(x: float, y: float, img_size: int) -> str:
    """Coarse location of a point: 'in the top left', 'on the right', 'in the center'..."""
    col = ("left", "center", "right")[min(int(3 * x / img_size), 2)]
    row = ("top", "middle", "bottom")[min(int(3 * y / img_size), 2)]
    if row == "middle":
        return "in the center" if col == "center" else f"on the {col}"
    return f"at the {row}" if col == "center" else f"in the {row} {col}"


def describe(shape: Shape, img_size: int) -> str:
    """'a large red circle' style noun phrase."""
    size = "large" if shape.radius >= LARGE * img_size else "small"
    return f"a {size} {shape.color} {shape.kind}"


def caption_scene(scene: Scene, img_size: int) -> str:
    """Caption naming the main shape (drawn last), then where it is relative to each other one."""
    main, others = scene.shapes[-1], scene.shapes[:-1]
    if not others:
        return f"{describe(main, img_size)} {_place(main.x, main.y, img_size)}"
    parts = [f"{_relation(main, o)} {describe(o, img_size)}" for o in others]
    return f"{describe(main, img_size)} " + " and ".join(parts)


def random_scene(rng: random.Random, img_size: int, max_shapes: int) -> Scene:
    """Draw 1..max_shapes non-overlapping shapes (the main, largest one last) and a background."""
    n = rng.randint(1, max_shapes)
    if n == 1:
        radii = [rng.uniform(0.09, 0.13) if rng.random() < 0.5 else rng.uniform(0.19, 0.25)]
    else:   # the main shape is large; the others small or large, always smaller than the main one
        radii = [rng.uniform(0.19, 0.25)] + [
            rng.uniform(0.08, 0.13) if rng.random() < 0.6 else rng.uniform(0.155, 0.18) for _ in range(n - 1)]
    shapes: List[Shape] = []
    for rel in radii:                                  # the main shape is placed first
        r = rel * img_size
        for _ in range(30):
            x, y = (rng.uniform(r + 1, img_size - r - 1) for _ in range(2))
            if all(math.hypot(x - s.x, y - s.y) > r + s.radius + 1 for s in shapes):
                tint = tuple(rng.uniform(-0.07, 0.07) for _ in range(3))
                shapes.append(Shape(rng.choice(SHAPES), rng.choice(list(COLORS)), r, x, y,
                                    rng.uniform(0, 2 * math.pi), tint))
                break
        # no free spot after 30 tries: this shape is left out (so the count stays truthful)
    return Scene(
        shapes=shapes[::-1],
        base=tuple(rng.uniform(0.05, 0.4) for _ in range(3)),
        blobs=[0.28 * (rng.random() - 0.5) for _ in range(3 * BLOB_GRID ** 2)],   # std 0.08
        stripes=(rng.uniform(0, math.pi), rng.uniform(0.2, 0.8), rng.uniform(0, 0.06)),
        noise_seed=rng.getrandbits(63))


@register_dataset("shapes")
class ShapesDataset(Dataset):
    """Generated coloured-shape scenes, classified by ``target``; see the module docstring.

    Args:
        split: 'train', 'val' or 'test'.
        num_samples: samples in this split (default 2000 train, 500 val / test).
        img_size: image height and width in pixels (>= 16).
        target: 'shape', 'color' or 'count'.
        max_shapes: most shapes per image (1..5).
        seed: base seed; each sample is a function of (seed, split, index).
        noise: std of the per-pixel Gaussian noise.
    """
    task = "image"
    multi_label = False
    mean = (0.28, 0.265, 0.265)  # per-channel statistics measured over generated images
    std = (0.21, 0.2, 0.2)

    def __init__(self, split: str, *, num_samples: Optional[int] = None, img_size: int = 64,
                 target: str = "shape", max_shapes: int = 3, seed: int = 0, noise: float = 0.03):
        self.split = check_choice("split", split, tuple(DEFAULT_NUM_SAMPLES))
        self.num_samples = check_positive(
            "num_samples", DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples)
        self.img_size = check_positive("img_size", img_size, 16)
        self.target = check_choice("target", target, TARGETS)
        self.max_shapes = check_choice("max_shapes", max_shapes, range(1, len(COUNT_WORDS) + 1))
        self.seed, self.noise = seed, noise
        self.classes = {"shape": list(SHAPES), "color": list(COLORS),
                        "count": list(COUNT_WORDS[:max_shapes])}[target]
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return self.num_samples

    def scene(self, index: int) -> Scene:
        """The scene of sample ``index``."""
        rng = sample_rng("shapes", self.seed, self.split, check_index(index, len(self)))
        return random_scene(rng, self.img_size, self.max_shapes)

    def label_of(self, scene: Scene) -> int:
        """Class index of a scene under this dataset's ``target``."""
        main = scene.shapes[-1]
        value = {"shape": main.kind, "color": main.color, "count": COUNT_WORDS[len(scene.shapes) - 1]}
        return self.classes.index(value[self.target])

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """(img - mean) / std per channel of [..., 3, H, W] images in [0, 1]."""
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (img - mean) / std

    def __getitems__(self, indices: Sequence[int]) -> List[dict]:
        """Samples of ``indices``, rasterised together (``DataLoader`` calls this per batch)."""
        scenes = [self.scene(i) for i in indices]
        imgs = torch.cat([self.normalize(render_scenes(scenes[i:i + RENDER_CHUNK], self.img_size, self.noise))
                          for i in range(0, len(scenes), RENDER_CHUNK)])   # [B, 3, H, W]
        return [{"input": img, "label": self.label_of(s), "caption": caption_scene(s, self.img_size)}
                for img, s in zip(imgs, scenes)]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]
