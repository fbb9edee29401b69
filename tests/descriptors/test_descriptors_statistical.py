"""Gonzalez & Woods statistics against the formulas (float64 numpy) and G&W's worked numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnlab.descriptors import statistical


def _formulas(grey, levels):
    p = np.bincount(grey.ravel(), minlength=levels) / grey.size
    z = np.arange(levels, dtype=np.float64)
    m = (z * p).sum()
    var = ((z - m) ** 2 * p).sum()
    nz = p[p > 0]
    return {"mean": m, "std": np.sqrt(var), "smoothness": 1 - 1 / (1 + var / (levels - 1) ** 2),
            "third_moment": ((z - m) ** 3 * p).sum() / (levels - 1) ** 2, "uniformity": (p**2).sum(),
            "entropy": -(nz * np.log2(nz)).sum()}


def test_gonzalez_woods_worked_numbers():
    """std 11.79, 74.63, 33.73 with L = 256 give R = 0.002, 0.079, 0.017 (DESIGN.md 4, G&W's table)."""
    for sigma, smoothness in [(11.79, 0.002), (74.63, 0.079), (33.73, 0.017)]:
        # Half the pixels near 128 - sigma, half near 128 + sigma, each mass split between the two nearest
        # integer levels (so the standard deviation is sigma up to the splitting, computed below exactly).
        p = np.zeros(256)
        for centre in (128 - sigma, 128 + sigma):
            lower = int(np.floor(centre))
            fraction = centre - lower
            p[lower] += 0.5 * (1 - fraction)
            p[lower + 1] += 0.5 * fraction
        stats = statistical.histogram_statistics(jnp.asarray(p, jnp.float32))
        z = np.arange(256)
        var = ((z - (z * p).sum()) ** 2 * p).sum()
        assert abs(np.sqrt(var) - sigma) < 0.01
        np.testing.assert_allclose(float(stats["std"]), np.sqrt(var), rtol=1e-4)
        assert round(float(stats["smoothness"]), 3) == smoothness
        np.testing.assert_allclose(float(stats["smoothness"]), 1 - 1 / (1 + var / 255**2), rtol=1e-4)


@pytest.mark.parametrize("levels", [256, 16])
def test_random_images_match_formulas(levels):
    rng = np.random.default_rng(levels)
    images = np.concatenate([
        rng.integers(0, 256, (40, 12, 14)),
        np.clip(rng.normal(100, 20, (40, 12, 14)), 0, 255),
        np.full((2, 12, 14), 77),
    ]).astype(np.uint8)
    stats = jax.jit(jax.vmap(lambda x: statistical.statistics(x, levels)))(jnp.asarray(images))
    for i, image in enumerate(images):
        grey = image.astype(np.int64) * levels // 256
        for name, value in _formulas(grey, levels).items():
            np.testing.assert_allclose(float(stats[name][i]), value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_constant_image_and_float_input():
    constant = statistical.statistics(jnp.full((6, 6), 200, jnp.uint8))
    assert float(constant["std"]) == 0 and float(constant["smoothness"]) == 0
    assert float(constant["uniformity"]) == 1 and float(constant["entropy"]) == 0
    assert float(constant["mean"]) == 200
    floats = np.linspace(0, 1, 36).reshape(6, 6).astype(np.float32)
    stats = statistical.statistics(jnp.asarray(floats), 256)
    grey = np.round(floats * 255).astype(int)
    np.testing.assert_allclose(float(stats["mean"]), grey.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(stats["entropy"]), np.log2(36), rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="levels must be an integer in 2..256"):
        statistical.statistics(jnp.zeros((4, 4), jnp.uint8), 300)
    with pytest.raises(TypeError, match="uint8"):
        statistical.statistics(jnp.zeros((4, 4), jnp.int32))
    with pytest.raises(ValueError, match="2-D"):
        statistical.statistics(jnp.zeros((4, 4, 1), jnp.uint8))
