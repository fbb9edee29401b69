"""Geometric descriptors equal skimage regionprops (whole foreground as one region) within 1e-4 relative."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import pdist
from skimage import measure

from cnnlab.descriptors import geometric
from _descriptor_shapes import HEIGHT, WIDTH, hard_cases, random_masks

CASES = hard_cases()
_geometric = jax.jit(jax.vmap(geometric.geometric))


def _reference(mask):
    """regionprops of the binary mask as one region, and the point-set diameter, in float64."""
    region = measure.regionprops(mask.astype(np.uint8))[0]
    coords = np.argwhere(mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minor = region.axis_minor_length
        axis_ratio = np.float64(region.axis_major_length) / np.float64(minor)
    values = {
        "area": region.area, "perimeter": region.perimeter,
        "diameter": pdist(coords).max() if len(coords) > 1 else 0.0,
        "compactness": region.perimeter ** 2 / region.area, "eccentricity": region.eccentricity,
        "axis_ratio": axis_ratio, "major_axis_length": region.axis_major_length,
        "minor_axis_length": minor, "extent": region.extent, "solidity": region.solidity,
    }
    mu = region.moments_normalized
    return values, np.asarray(region.moments_hu), mu


def _hu_term_scale(nu):
    """Magnitude of the products Hu's invariants 3..7 are differences of (where float32 cancels)."""
    third = np.sqrt(sum(nu[p, q] ** 2 for p, q in [(3, 0), (0, 3), (2, 1), (1, 2)]))
    second = np.sqrt(sum(nu[p, q] ** 2 for p, q in [(2, 0), (0, 2), (1, 1)]))
    return np.array([second, second**2, third**2, third**2, third**4, second * third**2, third**4])


def test_equal_to_regionprops_on_random_and_hard_cases():
    masks = np.concatenate([random_masks(300, seed=1), np.stack(list(CASES.values()))])
    masks = masks[masks.reshape(len(masks), -1).any(1)]
    ours = {k: np.asarray(v, np.float64) for k, v in _geometric(jnp.asarray(masks)).items()}
    for i, mask in enumerate(masks):
        reference, hu, nu = _reference(mask)
        for name, expected in reference.items():
            np.testing.assert_allclose(ours[name][i], expected, rtol=1e-4, atol=1e-6, err_msg=f"{name} #{i}")
        got_hu = np.array([ours[f"hu_{k}"][i] for k in range(1, 8)])
        # Within 1e-4 relative; values that are zero up to rounding (symmetric shapes) within 1e-9 of the size
        # of the products Hu 3-7 are differences of.
        tolerance = 1e-4 * np.abs(hu) + 1e-9 * _hu_term_scale(nu) + 1e-30
        assert np.all(np.abs(got_hu - hu) <= tolerance), (i, got_hu, hu, np.abs(got_hu - hu) / np.abs(hu))


def test_worked_numbers_square_pixel_and_empty():
    masks = np.zeros((3, HEIGHT, WIDTH), bool)
    masks[0, 2:10, 3:11] = True            # 8x8 square
    masks[1, 5, 7] = True                  # one pixel
    values = {k: np.asarray(v) for k, v in _geometric(jnp.asarray(masks)).items()}
    assert values["area"][0] == 64
    np.testing.assert_allclose(values["perimeter"][0], 28.0, rtol=1e-6)
    np.testing.assert_allclose(values["major_axis_length"][0], 9.165, rtol=1e-4)
    np.testing.assert_allclose(values["minor_axis_length"][0], 9.165, rtol=1e-4)
    np.testing.assert_allclose(values["diameter"][0], 7 * np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(values["compactness"][0], 28.0**2 / 64, rtol=1e-6)
    assert values["eccentricity"][0] == 0 and values["extent"][0] == 1 and values["solidity"][0] == 1
    np.testing.assert_allclose(values["axis_ratio"][0], 1.0, rtol=1e-6)
    # One pixel: everything well defined except major/minor, which is 0/0.
    assert values["area"][1] == 1 and values["perimeter"][1] == 0 and values["diameter"][1] == 0
    assert values["solidity"][1] == 1 and values["extent"][1] == 1 and values["eccentricity"][1] == 0
    assert np.isnan(values["axis_ratio"][1])
    # Empty: area, perimeter, diameter 0; the rest NaN (no region).
    for name in geometric.NAMES:
        if name in ("area", "perimeter", "diameter"):
            assert values[name][2] == 0, name
        else:
            assert np.isnan(values[name][2]), name


def test_straight_line_axis_ratio_is_infinite_and_feret_differs_from_point_diameter():
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[4, 2:12] = True
    values = _geometric(jnp.asarray(mask[None]))
    assert np.isinf(float(values["axis_ratio"][0])) and float(values["minor_axis_length"][0]) == 0
    np.testing.assert_allclose(float(values["diameter"][0]), 9.0)
    square = np.zeros((12, 12), np.uint8)
    square[2:10, 2:10] = 1
    feret = measure.regionprops(square)[0].feret_diameter_max    # contour of the convex image: larger
    assert feret > 7 * np.sqrt(2) + 0.5


def test_convex_area_equals_convex_hull_image_on_thin_and_diagonal_shapes():
    rng = np.random.default_rng(5)
    masks = np.zeros((200, HEIGHT, WIDTH), bool)
    for mask in masks:                      # a few random points: long thin hulls with slanted edges
        count = rng.integers(1, 6)
        mask[rng.integers(0, HEIGHT, count), rng.integers(0, WIDTH, count)] = True
    ours = np.asarray(jax.jit(jax.vmap(geometric.convex_area))(jnp.asarray(masks)))
    for mask, value in zip(masks, ours):
        assert value == measure.regionprops(mask.astype(np.uint8))[0].area_convex


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="mask must be bool"):
        geometric.geometric(jnp.zeros((4, 4), jnp.float32))
    with pytest.raises(ValueError, match="2-D"):
        geometric.perimeter(jnp.zeros((4,), bool))
