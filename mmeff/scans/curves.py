"""Generalized Hilbert curves for boxes of any size, in 2D and 3D.

The classic Hilbert curve needs power-of-two sides.  The generalization follows the idea of
J. Červený's "gilbert" (https://github.com/jakubcerveny/gilbert): a box with a known orientation
(a major axis ``a`` and two minor axes ``b``, ``c``) is filled by a curve that starts at its origin
corner and ends at the far end of its major axis; the box is cut into a few sub-boxes whose curves
chain end-to-start, and each is filled recursively until it is a line.  This implementation is
written from that idea and adds a parity rule that makes every step a unit step whenever that is
possible:

- A grid graph is bipartite, so a unit-step path from corner ``(0, 0, 0)`` to corner
  ``(w - 1, 0, 0)`` through all ``w * h * d`` cells needs ``w`` even or all three sides odd (with
  an even cell count the two ends must have opposite colours), and ``w > 1`` unless the box is a
  single cell.  :func:`_feasible` tests that condition.
- Every cut is chosen, among splits close to the halves, so that all sub-boxes are feasible; the
  top-level major axis is chosen feasible too.  Only if no candidate cut keeps every part feasible
  does the curve take a non-unit step.

Templates (``A2``, ``B2``, ``C2``: the cut lengths along ``a``, ``b``, ``c``):

- ``long``: cut ``a`` in two and fill both halves with the same orientation (an elongated box).
- ``three``: "up, across, down" along ``b`` (or ``c``), the 2D Hilbert step; the third axis is
  carried whole.
- ``five``: the 3D Hilbert step (octants in Gray-code order) with octants merged in pairs where
  they are traversed together, five sub-boxes.
"""
from __future__ import annotations

import itertools
from typing import Iterator, List, Sequence, Tuple

Vec = Tuple[int, int, int]
Box = Tuple[Vec, Vec, Vec, Vec]  # (origin, a, b, c)


def _add(*vs: Vec) -> Vec:
    return tuple(sum(c) for c in zip(*vs))  # type: ignore[return-value]


def _neg(v: Vec) -> Vec:
    return tuple(-c for c in v)  # type: ignore[return-value]


def _length(v: Vec) -> int:
    """Length of an axis-aligned vector."""
    return abs(sum(v))


def _unit(v: Vec) -> Vec:
    return tuple((c > 0) - (c < 0) for c in v)  # type: ignore[return-value]


def _along(v: Vec, n: int) -> Vec:
    """The vector of length ``n`` in the direction of ``v``."""
    return tuple(c * n for c in _unit(v))  # type: ignore[return-value]


def _feasible(w: int, h: int, d: int) -> bool:
    """Whether a unit-step path can fill a ``w x h x d`` box from ``(0,0,0)`` to ``(w-1,0,0)``."""
    if w == 1:
        return h == 1 and d == 1
    return w % 2 == 0 or (h * d) % 2 == 1


def _near_half(n: int) -> List[int]:
    """Cut positions in ``[1, n - 1]``, closest to ``n / 2`` first."""
    half = n // 2
    cands = [half + o for o in (0, 1, -1, 2, -2)]
    return [m for m in dict.fromkeys(cands) if 1 <= m < n]


def _long(o: Vec, a: Vec, b: Vec, c: Vec, a2: int) -> List[Box]:
    A2 = _along(a, a2)
    return [(o, A2, b, c), (_add(o, A2), _add(a, _neg(A2)), b, c)]


def _three(o: Vec, a: Vec, b: Vec, c: Vec, a2: int, b2: int) -> List[Box]:
    A2, B2 = _along(a, a2), _along(b, b2)
    da, db = _unit(a), _unit(b)
    return [
        (o, B2, A2, c),                                            # up: [0, a2) x [0, b2)
        (_add(o, B2), a, _add(b, _neg(B2)), c),                    # across: [0, w) x [b2, h)
        (_add(o, a, _neg(da), B2, _neg(db)), _neg(B2), _neg(_add(a, _neg(A2))), c),  # down
    ]


def _five(o: Vec, a: Vec, b: Vec, c: Vec, a2: int, b2: int, c2: int) -> List[Box]:
    A2, B2, C2 = _along(a, a2), _along(b, b2), _along(c, c2)
    da, db, dc = _unit(a), _unit(b), _unit(c)
    a_end, b_top, c_end = _add(a, _neg(da)), _add(B2, _neg(db)), _add(c, _neg(dc))
    rest_a, rest_b, rest_c = _add(a, _neg(A2)), _add(b, _neg(B2)), _add(c, _neg(C2))
    return [
        (o, B2, C2, A2),                                   # [0, a2) x [0, b2) x [0, c2)
        (_add(o, B2), c, A2, rest_b),                      # [0, a2) x [b2, h) x [0, d)
        (_add(o, b_top, c_end), a, _neg(B2), _neg(rest_c)),  # [0, w) x [0, b2) x [c2, d)
        (_add(o, a_end, B2, c_end), _neg(c), _neg(rest_a), rest_b),  # [a2, w) x [b2, h) x [0, d)
        (_add(o, a_end, b_top), _neg(B2), C2, _neg(rest_a)),  # [a2, w) x [0, b2) x [0, c2)
    ]


def _templates(o: Vec, a: Vec, b: Vec, c: Vec) -> Iterator[Iterator[List[Box]]]:
    """Candidate decompositions, template by template in order of preference for this shape;
    each template lazily yields its candidate cuts, closest to the halves first."""
    w, h, d = _length(a), _length(b), _length(c)

    def long():
        return (_long(o, a, b, c, a2) for a2 in _near_half(w))

    def three_b():
        return (_three(o, a, b, c, a2, b2) for b2 in _near_half(h) for a2 in _near_half(w))

    def three_c():
        return (_three(o, a, c, b, a2, c2) for c2 in _near_half(d) for a2 in _near_half(w))

    def five():
        return (_five(o, a, b, c, a2, b2, c2) for b2, c2, a2 in
                itertools.product(_near_half(h), _near_half(d), _near_half(w)))

    if 2 * w > 3 * h and 2 * w > 3 * d:
        order = (long, three_b, three_c, five)
    elif 3 * h > 4 * d:
        order = (three_b, five, three_c, long)
    elif 3 * d > 4 * h:
        order = (three_c, five, three_b, long)
    else:
        order = (five, three_b, three_c, long)
    return (template() for template in order)


def _fill(o: Vec, a: Vec, b: Vec, c: Vec, out: List[Vec]) -> None:
    """Append the cells of the box (o; a, b, c) to ``out`` in curve order."""
    w, h, d = _length(a), _length(b), _length(c)
    if h == 1 and d == 1:  # a line along the major axis
        da = _unit(a)
        out.extend(_add(o, tuple(x * i for x in da)) for i in range(w))
        return
    if w == 1:  # cannot come back to the origin: fill the b x c face instead
        _fill(o, b, c, a, out) if h >= d else _fill(o, c, b, a, out)
        return
    chosen = fallback = None
    for candidates in _templates(o, a, b, c):
        for boxes in candidates:
            fallback = fallback or boxes
            if all(_feasible(*map(_length, box[1:])) for box in boxes):
                chosen = boxes
                break
        if chosen:
            break
    for box in chosen or fallback:
        _fill(*box, out)


def hilbert_order(shape: Sequence[int]) -> List[int]:
    """Row-major indices of the cells of a grid of ``shape`` (2 or 3 sides) in generalized Hilbert
    order, starting at the origin corner.

    The major axis is the longest side that is even (any side if all are odd), so a unit-step path
    always exists; every consecutive pair of cells was checked to be grid-adjacent for all 2D sizes
    up to 40 x 40 and all 3D sizes up to 12 x 12 x 12.
    """
    dims = (1,) * (3 - len(shape)) + tuple(shape)
    axes = [tuple(n if i == k else 0 for i in range(3)) for k, n in enumerate(dims)]
    odd = all(n % 2 for n in dims)
    # major axis: the longest one that makes the whole box feasible (even, unless all sides are odd)
    major = max(range(3), key=lambda k: (odd or dims[k] % 2 == 0, dims[k]))
    b, c = sorted((k for k in range(3) if k != major), key=lambda k: -dims[k])
    cells: List[Vec] = []
    _fill((0, 0, 0), axes[major], axes[b], axes[c], cells)
    _, H, W = dims
    return [(t * H + i) * W + j for t, i, j in cells]
