"""Topological descriptors equal scikit-image's label / euler_number / skeletonize, exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import measure, morphology

from cnnlab.descriptors import topological
from _descriptor_shapes import diagonal_snake, hard_cases, random_masks, snake, spiral
from _skeleton_reference import skeleton_reference

CASES = hard_cases()


@functools.lru_cache(maxsize=None)
def _batched(connectivity):
    def one(mask):
        labels, rounds = topological.label(mask, connectivity)
        return topological.topological(mask, connectivity), topological.skeleton(mask), labels, rounds
    return jax.jit(jax.vmap(one))


def _masks():
    return np.concatenate([random_masks(300, seed=0), np.stack(list(CASES.values()))])


def _skeleton_counts(skel):
    padded = np.pad(skel.astype(int), 1)
    neighbours = sum(np.roll(np.roll(padded, dr, 0), dc, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                     if (dr, dc) != (0, 0))[1:-1, 1:-1]
    return skel.sum(), (skel & (neighbours == 1)).sum(), (skel & (neighbours >= 3)).sum()


@pytest.mark.parametrize("connectivity", [4, 8])
def test_counts_equal_skimage_on_random_and_hard_cases(connectivity):
    masks = _masks()
    values, skeletons, labels, _ = _batched(connectivity)(jnp.asarray(masks))
    values = {k: np.asarray(v) for k, v in values.items()}
    labels = np.asarray(labels)
    sk_connectivity = 1 if connectivity == 4 else 2
    names = [f"random{i}" for i in range(300)] + list(CASES)
    for i, (name, mask) in enumerate(zip(names, masks)):
        reference_labels = measure.label(mask, connectivity=sk_connectivity)
        count = reference_labels.max()
        euler = measure.euler_number(mask, connectivity=sk_connectivity)
        assert values["components"][i] == count, name
        assert values["euler_number"][i] == euler, name
        assert values["holes"][i] == count - euler, name
        # Same partition of the pixels: each reference component carries exactly one of our labels.
        ours = labels[i][mask]
        pairs = set(zip(reference_labels[mask].tolist(), ours.tolist()))
        assert len(pairs) == count == len(set(ours.tolist())), name
        skel = morphology.skeletonize(mask)
        np.testing.assert_array_equal(np.asarray(skeletons[i]), skel, err_msg=name)
        length, ends, branches = _skeleton_counts(skel)
        assert (values["skeleton_length"][i], values["end_points"][i], values["branch_points"][i]) == (
            length, ends, branches), name


def test_hard_cases_have_the_expected_topology():
    """Known answers, independent of scikit-image: (components, holes) under 4- and 8-adjacency."""
    expected = {
        "diagonal_pair": ((2, 0), (1, 0)),
        "ring_missing_corner": ((1, 0), (1, 1)),          # the background leaks through the diagonal under 4
        "ring_with_diagonal_leak": ((2, 0), (1, 1)),
        "nested_rings_with_dot": ((3, 2), (3, 2)),
        "holes_at_border": ((1, 1), (1, 1)),              # open to the border = not a hole
        "single_pixel": ((1, 0), (1, 0)),
        "empty": ((0, 0), (0, 0)),
        "full": ((1, 0), (1, 0)),
        "diagonal_line": ((15, 0), (1, 0)),
        "blocks_touching_diagonally": ((3, 0), (1, 0)),
    }
    masks = jnp.asarray(np.stack(list(CASES.values())))
    for index, connectivity in enumerate((4, 8)):
        values = jax.jit(jax.vmap(lambda m, c=connectivity: topological.topological(m, c)))(masks)
        for i, name in enumerate(CASES):
            if name in expected:
                got = (int(values["components"][i]), int(values["holes"][i]))
                assert got == expected[name][index], (name, connectivity)


def test_skeleton_hand_cases():
    skeletons = jax.jit(jax.vmap(topological.skeleton))(jnp.asarray(np.stack(list(CASES.values()))))
    by_name = dict(zip(CASES, np.asarray(skeletons)))
    assert by_name["empty"].sum() == 0
    assert by_name["single_pixel"].sum() == 1
    assert by_name["block_2x2"].sum() >= 1                  # Zhang-Suen as in skimage keeps 2x2 blocks alive
    np.testing.assert_array_equal(by_name["diagonal_line"], CASES["diagonal_line"])   # already thin
    cross = jax.jit(topological.topological, static_argnums=1)(jnp.asarray(CASES["cross"]), 8)
    assert int(cross["end_points"]) == 4 and int(cross["branch_points"]) >= 1


def _min_propagation_rounds(mask, connectivity):
    """Rounds plain min-label propagation (no hooking, no jumping) needs: the contrast for the test below."""
    big = mask.size
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape), big)
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)] + ([(-1, -1), (-1, 1), (1, -1), (1, 1)] if connectivity == 8 else [])
    rounds = 0
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        h, w = mask.shape
        smallest = np.minimum.reduce([labels] + [padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr, dc in offsets])
        new = np.where(mask, smallest, big)
        rounds += 1
        if (new == labels).all():
            return rounds
        labels = new


@pytest.mark.parametrize("connectivity", [4, 8])
def test_spirals_and_snakes_label_in_few_rounds(connectivity):
    """Worst cases for propagation: one long path. Plain min-label propagation would need about as many
    rounds as the path is long (hundreds here); hooking + pointer jumping needs a handful."""
    shapes = {"spiral": spiral(32), "snake": snake(32, 32), "diagonal_snake": diagonal_snake(32),
              "spiral_transposed": spiral(32).T[::-1], "snake_transposed": snake(32, 32).T}
    masks = np.stack(list(shapes.values()))
    labels, rounds = jax.jit(jax.vmap(lambda m: topological.label(m, connectivity)))(jnp.asarray(masks))
    for i, (name, mask) in enumerate(shapes.items()):
        reference = measure.label(mask, connectivity=1 if connectivity == 4 else 2)
        ours = np.asarray(labels[i])[mask]
        assert len(set(ours.tolist())) == reference.max(), name
        assert len(set(zip(reference[mask].tolist(), ours.tolist()))) == reference.max(), name
        path_length = mask.sum()
        plain = _min_propagation_rounds(mask, connectivity)
        print(f"{name} connectivity={connectivity}: {int(rounds[i])} rounds for {path_length} pixels "
              f"(plain min propagation: {plain})")
        assert int(rounds[i]) <= 12, (name, int(rounds[i]), path_length)
        assert plain > 10 * int(rounds[i]), (name, plain)


def test_bad_inputs_raise_clear_errors():
    mask = jnp.zeros((5, 5), bool)
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        topological.components(mask, 6)
    with pytest.raises(TypeError, match="mask must be bool"):
        topological.euler_number(jnp.zeros((5, 5), jnp.uint8))
    with pytest.raises(ValueError, match="2-D"):
        topological.skeleton(jnp.zeros((2, 5, 5), bool))


def test_packed_skeleton_on_wide_images_spans_several_words():
    """Rows wider than 32 pixels use several uint32 words with carries between them; compare with skimage and
    with the pixel-by-pixel version."""
    masks = random_masks(40, seed=3, height=12, width=70)
    packed = np.asarray(jax.jit(jax.vmap(topological.skeleton))(jnp.asarray(masks)))
    plain = [skeleton_reference(mask) for mask in masks]
    for mask, ours, reference in zip(masks, packed, plain):
        np.testing.assert_array_equal(ours, morphology.skeletonize(mask))
        np.testing.assert_array_equal(reference, ours)
    rows = topological.pack_rows(jnp.asarray(masks[0]))
    assert rows.shape == (12, 3) and rows.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(topological.unpack_rows(rows, 70)), masks[0])


def test_components_on_odd_sized_images():
    """8-adjacency labels 2x2 blocks: odd heights and widths are padded with background; check both."""
    masks = random_masks(60, seed=9, height=13, width=17)
    for connectivity in (4, 8):
        counts = np.asarray(jax.jit(jax.vmap(lambda m, c=connectivity: topological.components(m, c)))(
            jnp.asarray(masks)))
        expected = [measure.label(m, connectivity=connectivity // 4).max() for m in masks]
        np.testing.assert_array_equal(counts, expected)
