"""Topological descriptors of one binary object mask ``[H, W]`` (bool), under 4- or 8-adjacency.

* ``components``: connected components of the foreground, exactly as ``skimage.measure.label(mask,
  connectivity=1 | 2).max()`` for ``connectivity=4 | 8``. Computed by ``label`` (below), no Python loop.
* ``euler_number``: Gray's 2x2 bit-quad count over the mask padded with background:
  E4 = (n(Q1) - n(Q3) + 2 n(QD)) / 4 and E8 = (n(Q1) - n(Q3) - 2 n(QD)) / 4, where Q1/Q3 are quads with
  one/three foreground pixels and QD the two diagonal quads. Under foreground 4-adjacency the background is
  8-adjacent and vice versa (complementary adjacency), which is what ``skimage.measure.euler_number(mask,
  connectivity=1 | 2)`` computes; equal on every tested image.
* ``holes`` = components - euler_number (background components enclosed by the object, counted with the
  complementary adjacency; a hole touching the image border is not a hole since the image is padded with
  background).
* ``skeleton``: Zhang-Suen thinning exactly as ``skimage.morphology.skeletonize`` (2-D, ``method='zhang'``,
  scikit-image 0.26): each iteration has two parallel sub-passes over a one-pixel background border; a
  foreground pixel is removed when a 256-entry table indexed by its 8 neighbours says so for that sub-pass.
  The table is scikit-image's (``skimage/morphology/_skeletonize_various_cy.pyx``, BSD-3-Clause; it is
  Zhang-Suen's rule with refinements that keep 2x2 blocks and two-pixel-thick diagonals from vanishing).
* ``skeleton_length``: number of skeleton pixels. ``end_points``: skeleton pixels with exactly one
  8-neighbour in the skeleton. ``branch_points``: skeleton pixels with three or more. (The Zhang-Suen skeleton
  is 8-connected, so these counts use 8-neighbours whatever ``connectivity`` is.) An isolated skeleton pixel
  is neither.

Connected-component labelling (``label``): XLA has no labelling primitive, so it is a data-parallel
union-find on a grid graph. Every node starts as its own root (its flat index); each round (1) takes the minimum
label over the node and its joined neighbours, (2) hooks: the node's current parent is lowered to that minimum by
a scatter-min (so a whole tree moves at once, not one node per round), and (3) compresses paths by pointer
jumping ``parent = parent[parent]`` to convergence. Pointers only ever decrease and stay inside the component,
so it ends with one root (the smallest flat index) per component. Under 4-adjacency the nodes are the foreground
pixels; under 8-adjacency they are the non-empty 2x2 blocks (whose foreground pixels are always mutually
8-adjacent), joined when two of their pixels are 8-adjacent: 4x fewer nodes for the gathers and scatters. Min-label propagation alone needs as many
rounds as the longest geodesic path (hundreds on a 28x28 spiral); the hooking plus jumping needs a handful
(measured in tests/descriptors/test_topological.py on spirals and snakes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# scikit-image's Zhang-Suen table (see the module docstring). Index: neighbours weighted NW 1, N 2, NE 4,
# E 8, SE 16, S 32, SW 64, W 128. Value: 0 keep, 1 remove in the first sub-pass, 2 in the second, 3 in both.
_ZHANG_SUEN_TABLE = np.array([int(ch) for ch in (
    "0001001300311013000000002020303300000000300000000000000020003022"
    "0000000000000000000000000000000020000000200020003000000030003020"
    "0031001300000001000000000000000131000000000000002000000000000000"
    "2313001300000001000000000000000023010001000000003301000022002000")], dtype=np.int32)
_FIRST_PASS = np.isin(_ZHANG_SUEN_TABLE, (1, 3))
_SECOND_PASS = np.isin(_ZHANG_SUEN_TABLE, (2, 3))

_OFFSETS_4 = ((-1, 0), (0, -1), (0, 1), (1, 0))
_OFFSETS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

NAMES = ("components", "euler_number", "holes", "skeleton_length", "end_points", "branch_points")


def check_connectivity(connectivity) -> int:
    if connectivity not in (4, 8) or isinstance(connectivity, bool):
        raise ValueError(f"connectivity must be 4 or 8 (pixel adjacency); got {connectivity!r}.")
    return int(connectivity)


def check_mask(mask) -> jax.Array:
    mask = jnp.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be one 2-D binary image [H, W]; got shape {tuple(mask.shape)}.")
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be bool (the object); got dtype {mask.dtype}. Use mask > threshold, "
                        "or cnnlab.descriptors.binarize.foreground(image).")
    return mask


def shifted_neighbours(x: jax.Array, offsets, fill) -> list[jax.Array]:
    """For each (dr, dc): y[r, c] = x[r + dr, c + dc], ``fill`` outside the image."""
    height, width = x.shape
    padded = jnp.pad(x, 1, constant_values=fill)
    return [padded[1 + dr:1 + dr + height, 1 + dc:1 + dc + width] for dr, dc in offsets]


def _union_find(nodes: jax.Array, edges) -> tuple[jax.Array, jax.Array]:
    """Connected components of a grid graph by data-parallel union-find (module docstring).

    nodes: bool [h, w]; edges: list of ((dr, dc), bool [h, w]) where edge[p] says that node p is joined to node
    p + (dr, dc) (both directions listed). Returns (labels int32 [h, w]: the smallest flat index of the node's
    component, h * w off the nodes; rounds int32).
    """
    height, width = nodes.shape
    size = height * width
    background = jnp.int32(size)
    index = jnp.arange(size, dtype=jnp.int32).reshape(height, width)
    flat_nodes = nodes.reshape(-1)

    def neighbour_min(labels):
        smallest = labels
        for offset, edge in edges:
            shifted = shifted_neighbours(labels, [offset], background)[0]
            smallest = jnp.minimum(smallest, jnp.where(edge, shifted, background))
        return jnp.where(nodes, smallest, background)

    def compress(parent):
        # parent has a sentinel slot at `size` pointing to itself, so background lookups stay background.
        def body(state):
            p, _ = state
            jumped = p[p]
            return jumped, jnp.any(jumped != p)
        return jax.lax.while_loop(lambda s: s[1], body, (parent, jnp.bool_(True)))[0]

    def round_(state):
        labels, _, rounds = state
        smallest = neighbour_min(labels).reshape(-1)
        flat = labels.reshape(-1)
        parent = jnp.concatenate([flat, background[None]])
        parent = parent.at[flat].min(smallest)             # hook each node's parent to its neighbours' min
        parent = jnp.concatenate([jnp.minimum(parent[:size], smallest), background[None]])
        parent = compress(parent)
        new = jnp.where(flat_nodes, parent[:size], background).reshape(height, width)
        return new, jnp.any(new != labels), rounds + 1

    labels0 = jnp.where(nodes, index, background)
    labels, _, rounds = jax.lax.while_loop(lambda s: s[1], round_, (labels0, jnp.bool_(True), jnp.int32(0)))
    return labels, rounds


def _pixel_graph(mask):
    """4-adjacency: pixels are the nodes, joined to foreground 4-neighbours."""
    return mask, [(offset, mask & shifted_neighbours(mask, [offset], False)[0]) for offset in _OFFSETS_4]


def _block_graph(mask):
    """8-adjacency on 2x2 blocks: the foreground pixels of a 2x2 block are mutually 8-adjacent, so each block is
    one node (4x fewer nodes); two blocks are joined when a foreground pixel of one is 8-adjacent to one of the
    other. Blocks (i, j) hold pixels a = (2i, 2j), b = (2i, 2j+1), c = (2i+1, 2j), d = (2i+1, 2j+1)."""
    height, width = mask.shape
    padded = jnp.pad(mask, ((0, height % 2), (0, width % 2)))
    a, b, c, d = padded[0::2, 0::2], padded[0::2, 1::2], padded[1::2, 0::2], padded[1::2, 1::2]

    def at(x, offset):
        return shifted_neighbours(x, [offset], False)[0]

    right = (b | d) & at(a | c, (0, 1))
    down = (c | d) & at(a | b, (1, 0))
    down_right = d & at(a, (1, 1))
    down_left = c & at(b, (1, -1))
    edges = [((0, 1), right), ((1, 0), down), ((1, 1), down_right), ((1, -1), down_left),
             ((0, -1), at(right, (0, -1))), ((-1, 0), at(down, (-1, 0))),
             ((-1, -1), at(down_right, (-1, -1))), ((-1, 1), at(down_left, (-1, 1)))]
    return a | b | c | d, edges


def label(mask: jax.Array, connectivity: int = 8) -> tuple[jax.Array, jax.Array]:
    """Connected components of one mask.

    Returns ``(labels, rounds)``: labels int32 ``[H, W]``, one id per component shared by exactly its pixels
    (``H * W`` on the background); rounds: int32 number of union-find rounds. Under 4-adjacency the ids are the
    smallest flat pixel index (row * W + col) of the component; under 8-adjacency the union-find runs on 2x2
    blocks and the ids are the smallest flat block index.
    """
    mask = check_mask(mask)
    height, width = mask.shape
    if check_connectivity(connectivity) == 4:
        labels, rounds = _union_find(*_pixel_graph(mask))
        return labels, rounds
    block_labels, rounds = _union_find(*_block_graph(mask))
    pixel_labels = jnp.repeat(jnp.repeat(block_labels, 2, axis=0), 2, axis=1)[:height, :width]
    return jnp.where(mask, pixel_labels, height * width), rounds


def components(mask: jax.Array, connectivity: int = 8) -> jax.Array:
    """Number of connected components of the foreground (int32): the union-find roots."""
    mask = check_mask(mask)
    graph = _pixel_graph(mask) if check_connectivity(connectivity) == 4 else _block_graph(mask)
    labels, _ = _union_find(*graph)
    index = jnp.arange(labels.size, dtype=jnp.int32).reshape(labels.shape)
    return jnp.sum(graph[0] & (labels == index), dtype=jnp.int32)


def euler_number(mask: jax.Array, connectivity: int = 8) -> jax.Array:
    """Euler number (components - holes) by Gray's bit-quad counts (int32); see the module docstring."""
    mask = check_mask(mask)
    connectivity = check_connectivity(connectivity)
    p = jnp.pad(mask.astype(jnp.int32), 1)
    top_left, top_right, bottom_left, bottom_right = p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]
    count = top_left + top_right + bottom_left + bottom_right
    q1 = jnp.sum(count == 1)
    q3 = jnp.sum(count == 3)
    qd = jnp.sum((count == 2) & (top_left == bottom_right))
    sign = 1 if connectivity == 4 else -1
    return ((q1 - q3 + sign * 2 * qd) // 4).astype(jnp.int32)


def holes(mask: jax.Array, connectivity: int = 8) -> jax.Array:
    """Number of holes = components - Euler number (int32)."""
    return components(mask, connectivity) - euler_number(mask, connectivity)


def _literal_products(planes):
    """All 2^k conjunctions of literals of k bit-planes: result[i] = AND_j (planes[j] if bit j of i else ~planes[j])."""
    products = [None]
    for plane in planes:
        products = [literal if p is None else p & literal for literal in (~plane, plane) for p in products]
    return products


def _truth_table(table, planes):
    """Bitwise value of an 8-input truth table (``table[index]``, bit i of index = ``planes[i]``) on packed words:
    the OR of its minterms, built from two shared sets of 16 half-products (about 130 word operations)."""
    low, high = _literal_products(planes[:4]), _literal_products(planes[4:])
    result = jnp.zeros_like(planes[0])
    for hi in range(16):
        lows = [low[lo] for lo in range(16) if table[hi * 16 + lo]]
        if lows:
            result = result | (functools.reduce(jnp.bitwise_or, lows) & high[hi])
    return result


def pack_rows(mask: jax.Array) -> jax.Array:
    """Bit-packs a mask [H, W] into uint32 words [H, ceil(W/32)]: bit b of word k is column 32 k + b."""
    height, width = mask.shape
    words = -(-width // 32)
    padded = jnp.pad(mask, ((0, 0), (0, 32 * words - width))).reshape(height, words, 32)
    weights = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
    return jnp.sum(jnp.where(padded, weights, jnp.uint32(0)), axis=2, dtype=jnp.uint32)


def unpack_rows(rows: jax.Array, width: int) -> jax.Array:
    """Inverse of ``pack_rows``: bool [H, W]."""
    weights = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
    bits = (rows[:, :, None] & weights) != 0
    return bits.reshape(rows.shape[0], -1)[:, :width]


def skeleton(mask: jax.Array) -> jax.Array:
    """Zhang-Suen skeleton of one mask (bool ``[H, W]``), equal to ``skimage.morphology.skeletonize``.

    Runs on bit-packed rows (32 pixels per uint32 word): the neighbours are word shifts, and the removal table is
    evaluated as a Boolean function of the 8 neighbour bit-planes, so one word operation serves 32 pixels.
    """
    mask = check_mask(mask)
    one, thirty_one = jnp.uint32(1), jnp.uint32(31)

    def west(x):   # bit of column c - 1 moved to column c (carry from the previous word)
        carry = jnp.pad(x[:, :-1], ((0, 0), (1, 0))) >> thirty_one
        return (x << one) | carry

    def east(x):   # bit of column c + 1 moved to column c
        carry = jnp.pad(x[:, 1:], ((0, 0), (0, 1))) << thirty_one
        return (x >> one) | carry

    def sub_pass(rows, table):
        north = jnp.pad(rows[:-1], ((1, 0), (0, 0)))
        south = jnp.pad(rows[1:], ((0, 1), (0, 0)))
        # Table index bits: NW 1, N 2, NE 4, E 8, SE 16, S 32, SW 64, W 128.
        planes = [west(north), north, east(north), east(rows), east(south), south, west(south), west(rows)]
        return rows & ~_truth_table(table, planes)

    def body(state):
        rows, _ = state
        thinned = sub_pass(sub_pass(rows, _FIRST_PASS), _SECOND_PASS)
        return thinned, jnp.any(thinned != rows)

    rows, _ = jax.lax.while_loop(lambda s: s[1], body, (pack_rows(mask), jnp.bool_(True)))
    return unpack_rows(rows, mask.shape[1])


def _skeleton_counts(skel: jax.Array) -> dict[str, jax.Array]:
    s = skel.astype(jnp.int32)
    neighbours = functools.reduce(jnp.add, shifted_neighbours(s, _OFFSETS_8, 0))
    return {
        "skeleton_length": jnp.sum(s, dtype=jnp.int32),
        "end_points": jnp.sum(skel & (neighbours == 1), dtype=jnp.int32),
        "branch_points": jnp.sum(skel & (neighbours >= 3), dtype=jnp.int32),
    }


def skeleton_length(mask: jax.Array) -> jax.Array:
    """Number of pixels of the Zhang-Suen skeleton (int32)."""
    return _skeleton_counts(skeleton(mask))["skeleton_length"]


def end_points(mask: jax.Array) -> jax.Array:
    """Skeleton pixels with exactly one 8-neighbour in the skeleton (int32)."""
    return _skeleton_counts(skeleton(mask))["end_points"]


def branch_points(mask: jax.Array) -> jax.Array:
    """Skeleton pixels with three or more 8-neighbours in the skeleton (int32)."""
    return _skeleton_counts(skeleton(mask))["branch_points"]


def topological(mask: jax.Array, connectivity: int = 8) -> dict[str, jax.Array]:
    """All six topological descriptors of one mask (int32 scalars), the skeleton computed once."""
    count = components(mask, connectivity)
    euler = euler_number(mask, connectivity)
    return {"components": count, "euler_number": euler, "holes": count - euler, **_skeleton_counts(skeleton(mask))}
