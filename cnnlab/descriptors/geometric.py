"""Geometric descriptors of one binary object mask ``[H, W]`` (bool): the whole foreground as one region, as
``skimage.measure.regionprops(mask.astype(np.uint8))[0]`` sees it. Coordinates are (row, col) of pixel centres,
lengths in pixels, float32 results.

* ``area``: foreground pixels. ``extent``: area / area of the bounding box.
* ``perimeter``: regionprops' ``perimeter`` (``skimage.measure.perimeter(mask, 4)``): border pixels (foreground
  with a 4-neighbour in the background or outside the image) weighted by their border neighbours: 1 for straight
  runs, sqrt(2) for diagonal ones, (1 + sqrt(2)) / 2 for corners (an 8x8 square gives 28; one pixel gives 0).
* ``diameter``: the largest Euclidean distance between two foreground pixel centres (0 for one pixel), equal
  to ``scipy.spatial.distance.pdist(coords).max()``. It is computed from the leftmost and rightmost pixel of
  each row, since the farthest pair are convex-hull vertices. regionprops' ``feret_diameter_max`` differs: it
  measures marching-squares contour points of the convex image at half-pixel positions (for an 8x8 square it
  gives about 10.63 where ours gives 7 * sqrt(2) = 9.90); ours is the point-set diameter.
* ``compactness``: perimeter^2 / area (0 for one pixel, whose perimeter is 0).
* ``major_axis_length``, ``minor_axis_length``: 4 sqrt(eigenvalues) of the covariance (inertia tensor) of the
  pixel coordinates, as regionprops' ``axis_major_length``/``axis_minor_length`` (an 8x8 square gives 9.165).
* ``eccentricity``: sqrt(1 - l2 / l1) as regionprops (0 when l1 = 0); ``axis_ratio``: major / minor, the
  lecture's eccentricity (IEEE division: +inf for a straight line, NaN for one pixel).
* ``solidity``: area / convex area, the convex area counted as regionprops' ``area_convex``
  (``skimage.morphology.convex_hull_image``): pixels whose centre lies inside or on the convex hull of the
  midpoints of all pixel edges (each pixel contributes (r +- 1/2, c) and (r, c +- 1/2)). Computed exactly in
  integer arithmetic on doubled coordinates: the hull's left boundary is the convex minorant of the leftmost
  edge midpoints per half-row (a monotone-chain scan), the right boundary likewise, and each row counts the
  pixel centres between them.
* ``hu_1`` .. ``hu_7``: Hu's invariants of the normalised central moments, as ``skimage.measure.moments_hu``
  (regionprops ``moments_hu``). The moments, axes and Hu invariants are computed in float64 (``jax.enable_x64``
  inside these functions only; results are float32): Hu 5-7 are differences of nearly equal products.

Empty foreground: area, perimeter, diameter are 0 and every other geometric value is NaN (no region).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from cnnlab.descriptors.topological import check_mask, shifted_neighbours

NAMES = ("area", "perimeter", "diameter", "compactness", "eccentricity", "axis_ratio", "major_axis_length",
         "minor_axis_length", "extent", "solidity", "hu_1", "hu_2", "hu_3", "hu_4", "hu_5", "hu_6", "hu_7")

_SQRT2 = math.sqrt(2.0)
_OFFSETS_4 = ((-1, 0), (0, -1), (0, 1), (1, 0))
_DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def perimeter(mask: jax.Array) -> jax.Array:
    """regionprops perimeter of the foreground (float32; module docstring)."""
    mask = check_mask(mask)
    eroded = functools.reduce(jnp.logical_and, shifted_neighbours(mask, _OFFSETS_4, False), mask)
    border = (mask & ~eroded).astype(jnp.int32)
    straight = functools.reduce(jnp.add, shifted_neighbours(border, _OFFSETS_4, 0))
    diagonal = functools.reduce(jnp.add, shifted_neighbours(border, _DIAGONALS, 0))
    # Weight of a border pixel from (4-neighbours, diagonal neighbours) on the border (Benkrid & Crookes,
    # as skimage.measure.perimeter): code 1 + 2 * straight + 10 * diagonal.
    code = 1 + 2 * straight + 10 * diagonal
    weights = jnp.zeros(50, jnp.float32)
    weights = weights.at[jnp.array([5, 7, 15, 17, 25, 27])].set(1.0)
    weights = weights.at[jnp.array([21, 33])].set(_SQRT2)
    weights = weights.at[jnp.array([13, 23])].set((1.0 + _SQRT2) / 2.0)
    return jnp.sum(jnp.where(border > 0, weights[jnp.minimum(code, 49)], 0.0))


def _row_extremes(mask):
    """Leftmost and rightmost foreground column of each row (int32 [H]) and whether the row has any."""
    width = mask.shape[1]
    cols = jnp.arange(width, dtype=jnp.int32)
    has = jnp.any(mask, axis=1)
    left = jnp.min(jnp.where(mask, cols, width), axis=1)
    right = jnp.max(jnp.where(mask, cols, -1), axis=1)
    return left, right, has


def diameter(mask: jax.Array) -> jax.Array:
    """Largest distance between two foreground pixel centres (float32, 0 if fewer than two pixels)."""
    mask = check_mask(mask)
    left, right, has = _row_extremes(mask)
    rows = jnp.arange(mask.shape[0], dtype=jnp.int32)
    r = jnp.concatenate([rows, rows])
    c = jnp.concatenate([left, right])
    valid = jnp.concatenate([has, has])
    d2 = (r[:, None] - r[None, :]) ** 2 + (c[:, None] - c[None, :]) ** 2
    d2 = jnp.where(valid[:, None] & valid[None, :], d2, 0)
    return jnp.sqrt(jnp.max(d2).astype(jnp.float32))


def _convex_minorant_ceil(ys, xs, valid, queries):
    """ceil(f(q) / 2) for the convex minorant f of the valid points (ys increasing, integers) at int queries q.

    Monotone-chain lower hull by a scan with a stack, then f = max of the lines through consecutive hull
    vertices (valid inside [min y, max y] because f is convex). Exact integer arithmetic.
    """
    n = ys.shape[0]

    def push(state, point):
        stack_y, stack_x, top = state
        y, x, ok = point

        def must_pop(top):
            ay, ax = stack_y[top - 2], stack_x[top - 2]
            by, bx = stack_y[top - 1], stack_x[top - 1]
            # b is not strictly below chord a-c: slope(a, b) >= slope(b, c).
            return (top >= 2) & ((bx - ax) * (y - by) >= (x - bx) * (by - ay))

        top = jax.lax.while_loop(lambda t: ok & must_pop(t), lambda t: t - 1, top)
        stack_y = jnp.where(ok, stack_y.at[top].set(y), stack_y)
        stack_x = jnp.where(ok, stack_x.at[top].set(x), stack_x)
        return (stack_y, stack_x, top + ok.astype(jnp.int32)), None

    zeros = jnp.zeros(n, jnp.int32)
    (stack_y, stack_x, top), _ = jax.lax.scan(push, (zeros, zeros, jnp.int32(0)), (ys, xs, valid))
    ay, ax, by, bx = stack_y[:-1], stack_x[:-1], stack_y[1:], stack_x[1:]
    edge_ok = jnp.arange(n - 1) < top - 1
    den = jnp.where(edge_ok, by - ay, 1)
    # Line through a and b at q: ax + (bx - ax)(q - ay)/den; ceil of half of it = ceil(numer / (2 den)).
    numer = ax[:, None] * den[:, None] + (bx - ax)[:, None] * (queries[None, :] - ay[:, None])
    half_ceil = -((-numer) // (2 * den[:, None]))
    very_low = jnp.int32(-(2**30))
    return jnp.max(jnp.where(edge_ok[:, None], half_ceil, very_low), axis=0)


def convex_area(mask: jax.Array) -> jax.Array:
    """Pixels whose centre is inside or on the convex hull (regionprops ``area_convex``; int32)."""
    mask = check_mask(mask)
    height = mask.shape[0]
    left, right, has = _row_extremes(mask)
    big = jnp.int32(2**20)
    # Half-row levels Y = -1, 0, 1, ..., 2H - 1 in doubled coordinates (Y = 2 * row). Even Y = 2r: the pixel's
    # left/right edge midpoints (2c -+ 1). Odd Y = 2r - 1: top/bottom edge midpoints of rows r - 1 and r (2c).
    left_even = jnp.where(has, 2 * left - 1, big)
    right_even = jnp.where(has, 2 * right + 1, -big)
    left_pad = jnp.concatenate([jnp.array([big]), jnp.where(has, 2 * left, big), jnp.array([big])])
    right_pad = jnp.concatenate([jnp.array([-big]), jnp.where(has, 2 * right, -big), jnp.array([-big])])
    left_odd = jnp.minimum(left_pad[:-1], left_pad[1:])          # [H + 1]: Y = 2r - 1 for r = 0..H
    right_odd = jnp.maximum(right_pad[:-1], right_pad[1:])
    ys = jnp.arange(-1, 2 * height, dtype=jnp.int32)              # [2H + 1]
    xs_left = jnp.zeros(2 * height + 1, jnp.int32).at[0::2].set(left_odd).at[1::2].set(left_even)
    xs_right = jnp.zeros(2 * height + 1, jnp.int32).at[0::2].set(right_odd).at[1::2].set(right_even)
    valid = xs_left < big
    queries = 2 * jnp.arange(height, dtype=jnp.int32)
    first_col = _convex_minorant_ceil(ys, xs_left, valid, queries)
    # Right boundary: the concave majorant g; floor(g/2) = -ceil(-g/2) with -g the convex minorant of -x.
    last_col = -_convex_minorant_ceil(ys, -xs_right, valid, queries)
    rows = jnp.arange(height)
    any_rows = jnp.any(has)
    row_min = jnp.argmax(has)
    row_max = height - 1 - jnp.argmax(has[::-1])
    inside = any_rows & (rows >= row_min) & (rows <= row_max)
    return jnp.sum(jnp.where(inside, jnp.maximum(last_col - first_col + 1, 0), 0), dtype=jnp.int32)


def central_moments(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(area, mu [4, 4]) with mu[p, q] = sum over pixels (r - r_mean)^p (c - c_mean)^q, both float64.

    Call inside ``jax.enable_x64(True)`` (``geometric`` does): the higher Hu invariants are differences of
    nearly equal products, and float32 moments leave them only about 1e-3 relative accuracy.
    """
    height, width = mask.shape
    m = mask.astype(jnp.float64)
    row_counts, col_counts = jnp.sum(m, axis=1), jnp.sum(m, axis=0)
    area = jnp.sum(row_counts)
    safe_area = jnp.maximum(area, 1.0)
    rows = jnp.arange(height, dtype=jnp.float64)
    cols = jnp.arange(width, dtype=jnp.float64)
    dr = rows - jnp.sum(row_counts * rows) / safe_area            # [H], centred row coordinates
    dc = cols - jnp.sum(col_counts * cols) / safe_area            # [W]
    powers_r = jnp.stack([dr**p for p in range(4)], axis=1)       # [H, 4]
    powers_c = jnp.stack([dc**q for q in range(4)], axis=1)       # [W, 4]
    # mu[p, q] = sum_rc m[r, c] dr[r]^p dc[c]^q: two small matrix products.
    mu = powers_r.T @ m @ powers_c
    return area, mu


def hu_moments(mu: jax.Array) -> jax.Array:
    """Hu's seven invariants [7] of central moments mu [4, 4] (same dtype), as skimage moments_hu."""
    mu00 = mu[0, 0]

    def nu(p, q):
        return mu[p, q] / mu00 ** ((p + q) / 2.0 + 1.0)

    n20, n02, n11 = nu(2, 0), nu(0, 2), nu(1, 1)
    n30, n03, n21, n12 = nu(3, 0), nu(0, 3), nu(2, 1), nu(1, 2)
    a, b = n30 + n12, n21 + n03                    # sums
    c, d = n30 - 3 * n12, 3 * n21 - n03            # differences
    return jnp.stack([
        n20 + n02,
        (n20 - n02) ** 2 + 4 * n11**2,
        c**2 + d**2,
        a**2 + b**2,
        c * a * (a**2 - 3 * b**2) + d * b * (3 * a**2 - b**2),
        (n20 - n02) * (a**2 - b**2) + 4 * n11 * a * b,
        d * a * (a**2 - 3 * b**2) - c * b * (3 * a**2 - b**2),
    ])


def _moment_descriptors(mask):
    """Axis lengths, eccentricity, axis ratio and Hu moments, computed in float64, returned as float32."""
    with jax.enable_x64(True):
        area, mu = central_moments(mask)
        safe_area = jnp.maximum(area, 1.0)
        # Inertia tensor [[mu02, -mu11], [-mu11, mu20]] / mu00 (skimage's, rows first); eigenvalues clipped at 0.
        a, b, c = mu[0, 2] / safe_area, -mu[1, 1] / safe_area, mu[2, 0] / safe_area
        mid, radius = (a + c) / 2.0, jnp.sqrt(((a - c) / 2.0) ** 2 + b**2)
        l1, l2 = jnp.maximum(mid + radius, 0.0), jnp.maximum(mid - radius, 0.0)
        major, minor = 4.0 * jnp.sqrt(l1), 4.0 * jnp.sqrt(l2)
        ratio = jnp.where(l1 == 0, 0.0, l2 / jnp.where(l1 == 0, 1.0, l1))
        eccentricity = jnp.sqrt(jnp.maximum(1.0 - ratio, 0.0)) * (l1 != 0)
        values = {"eccentricity": eccentricity, "axis_ratio": major / minor, "major_axis_length": major,
                  "minor_axis_length": minor}
        hu = hu_moments(mu)
        values.update({f"hu_{i + 1}": hu[i] for i in range(7)})
        return {k: v.astype(jnp.float32) for k, v in values.items()}


def geometric(mask: jax.Array) -> dict[str, jax.Array]:
    """All geometric descriptors of one mask (float32 scalars; module docstring)."""
    mask = check_mask(mask)
    height, width = mask.shape
    area = jnp.sum(mask, dtype=jnp.float32)
    empty = area == 0
    nan = jnp.float32(jnp.nan)
    safe_area = jnp.maximum(area, 1.0)
    rows_any, cols_any = jnp.any(mask, axis=1), jnp.any(mask, axis=0)
    bbox_rows = height - jnp.argmax(rows_any) - jnp.argmax(rows_any[::-1])
    bbox_cols = width - jnp.argmax(cols_any) - jnp.argmax(cols_any[::-1])
    perim = perimeter(mask)
    hull_area = convex_area(mask).astype(jnp.float32)
    moments = _moment_descriptors(mask)
    values = {
        "area": area,
        "perimeter": perim,
        "diameter": diameter(mask),
        "compactness": perim**2 / safe_area,
        "eccentricity": moments["eccentricity"],
        "axis_ratio": moments["axis_ratio"],
        "major_axis_length": moments["major_axis_length"],
        "minor_axis_length": moments["minor_axis_length"],
        "extent": area / jnp.maximum(bbox_rows * bbox_cols, 1).astype(jnp.float32),
        "solidity": area / jnp.maximum(hull_area, 1.0),
        **{f"hu_{i + 1}": moments[f"hu_{i + 1}"] for i in range(7)},
    }
    defined_when_empty = ("area", "perimeter", "diameter")
    return {k: (v if k in defined_when_empty else jnp.where(empty, nan, v)).astype(jnp.float32)
            for k, v in values.items()}

