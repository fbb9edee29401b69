"""describe(): batched and jitted, equal to the per-image functions and to scikit-image's Otsu threshold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import filters, measure
from skimage.transform import resize
from sklearn.datasets import load_digits

from cnnlab import descriptors
from cnnlab.descriptors import binarize, statistical

_jitted_topological = jax.jit(descriptors.topological_descriptors, static_argnums=1)
_jitted_geometric = jax.jit(descriptors.geometric_descriptors)
_jitted_statistics = jax.jit(descriptors.statistics)


def _digits_28():
    images = load_digits().images[:60] / 16.0
    return np.stack([(resize(x, (28, 28), order=1) * 255).round().astype(np.uint8) for x in images])


def test_otsu_equals_skimage_on_uint8():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16)), rng.integers(100, 103, (16, 16)),
              np.where(rng.random((16, 16)) < 0.3, 200, 10), np.full((16, 16), 9)]
    images += [np.clip(rng.normal(rng.uniform(50, 200), rng.uniform(2, 60), (16, 16)), 0, 255) for _ in range(200)]
    images += [np.where(rng.random((16, 16)) < 0.5, rng.normal(60, 10, (16, 16)), rng.normal(180, 25, (16, 16)))
               .clip(0, 255) for _ in range(200)]
    images = np.stack(images).astype(np.uint8)
    ours = np.asarray(jax.jit(jax.vmap(binarize.otsu_threshold))(jnp.asarray(images)))
    for image, threshold in zip(images, ours):
        assert threshold == filters.threshold_otsu(image)


def test_describe_is_batched_and_equals_per_image_functions():
    images = _digits_28()
    batch = descriptors.describe(images[..., None])                 # Otsu, 8-adjacency
    assert set(batch) == set(descriptors.NAMES)
    assert all(v.shape == (len(images),) for v in batch.values())
    for i in (0, 7, 31):
        image = jnp.asarray(images[i])
        mask = jax.jit(descriptors.foreground)(image)
        np.testing.assert_array_equal(np.asarray(mask), images[i] > filters.threshold_otsu(images[i]))
        single = {**_jitted_topological(mask, 8), **_jitted_geometric(mask), **_jitted_statistics(image)}
        for name in descriptors.NAMES:
            np.testing.assert_allclose(np.asarray(batch[name][i]), np.asarray(single[name]), rtol=1e-5, atol=1e-9,
                                       err_msg=name)
    for i, image in enumerate(images):
        mask = image > filters.threshold_otsu(image)
        assert int(batch["components"][i]) == measure.label(mask, connectivity=2).max()
        assert int(batch["euler_number"][i]) == measure.euler_number(mask, connectivity=2)


def test_explicit_threshold_float_images_4_adjacency_and_constant_images():
    images = _digits_28().copy()                                    # the batch shape of the test above
    images[3] = 50                                                  # constant: empty foreground under Otsu
    thresholds = np.arange(len(images)) * 4                         # one threshold per image
    by_threshold = descriptors.describe(images[..., None], threshold=thresholds, connectivity=4)
    by_float = descriptors.describe(images[..., None].astype(np.float32) / 255.0, threshold=thresholds / 255.0,
                                    connectivity=4)
    for name in descriptors.NAMES:                                  # floats quantise back to the same levels
        np.testing.assert_allclose(np.asarray(by_float[name]), np.asarray(by_threshold[name]), rtol=1e-5,
                                   equal_nan=True, err_msg=name)
    for i, (image, threshold) in enumerate(zip(images, thresholds)):
        mask = image > threshold
        assert int(by_threshold["area"][i]) == mask.sum()
        assert int(by_threshold["components"][i]) == measure.label(mask, connectivity=1).max()
        assert int(by_threshold["euler_number"][i]) == measure.euler_number(mask, connectivity=1)
    otsu = descriptors.describe(images[..., None])                  # compiled by the test above
    assert int(otsu["components"][3]) == 0 and float(otsu["area"][3]) == 0
    assert np.isnan(float(otsu["solidity"][3])) and float(otsu["std"][3]) == 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"\[N, H, W, 1\]"):
        descriptors.describe(np.zeros((28, 28), np.uint8))
    with pytest.raises(ValueError, match="channels"):
        descriptors.describe(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        descriptors.describe(np.zeros((2, 8, 8, 1), np.int64))
    with pytest.raises(ValueError, match="connectivity"):
        descriptors.describe(np.zeros((2, 8, 8, 1), np.uint8), connectivity=6)
    with pytest.raises(ValueError, match="levels"):
        descriptors.describe(np.zeros((2, 8, 8, 1), np.uint8), levels=1)


def test_float_images_outside_0_1_or_not_finite_are_rejected_before_they_give_area_0():
    """0..255 floats used to be clipped to 1 (every pixel at the top level: empty foreground, area 0) and NaN
    compared False everywhere; both passed silently."""
    images = np.zeros((2, 8, 8, 1), np.float32)
    images[:, 2:6, 2:6] = 200.0
    with pytest.raises(ValueError, match=r"values up to 200\.0; float images must lie in \[0, 1\] \(divide by 255\)"):
        descriptors.describe(images)
    with pytest.raises(ValueError, match="values up to 200"):                   # a jax array on the device too
        descriptors.describe(jnp.asarray(images))
    with pytest.raises(ValueError, match=r"down to -0\.5"):
        descriptors.describe(np.full((2, 8, 8, 1), -0.5, np.float32))
    with_nan = images / 255.0
    with_nan[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        descriptors.describe(with_nan)
    with pytest.raises(ValueError, match="values up to 200"):                   # the per-image functions too
        descriptors.describe_image(jnp.asarray(images[0, ..., 0]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        statistical.statistics(np.full((4, 4), np.inf, np.float32))
    with pytest.raises(ValueError, match="values up to 200"):
        descriptors.foreground(images[0, ..., 0])
    # Inside a trace the values are unknown: the functions stay jittable (the check runs on the host first).
    in_range = jax.jit(descriptors.describe_image)(jnp.asarray(images[0, ..., 0] / 255.0))
    assert float(in_range["area"]) == 16


def test_threshold_of_the_wrong_length_names_the_expected_shape():
    images = np.zeros((5, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match=r"scalar or one value per image, shape \(5,\) .* got shape \(3,\)"):
        descriptors.describe(images, threshold=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"got shape \(5, 1\)"):
        descriptors.describe(images, threshold=np.zeros((5, 1)))
    with pytest.raises(ValueError, match="must be a scalar"):
        descriptors.describe_image(jnp.zeros((8, 8), jnp.uint8), threshold=np.array([1, 2]))
