"""describe(): batched and jitted, equal to the per-image functions and to scikit-image's Otsu threshold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import filters, measure

from cnnlab import descriptors
from cnnlab.descriptors import binarize


def _digits_28():
    from sklearn.datasets import load_digits
    from skimage.transform import resize
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
    for connectivity in (4, 8):
        batch = descriptors.describe(images[..., None], connectivity=connectivity)
        assert set(batch) == set(descriptors.NAMES)
        assert all(v.shape == (len(images),) for v in batch.values())
        for i in (0, 7, 31):
            image = jnp.asarray(images[i])
            mask = descriptors.foreground(image)
            np.testing.assert_array_equal(np.asarray(mask), images[i] > filters.threshold_otsu(images[i]))
            single = {**descriptors.topological_descriptors(mask, connectivity),
                      **descriptors.geometric_descriptors(mask), **descriptors.statistics(image)}
            for name in descriptors.NAMES:
                np.testing.assert_allclose(np.asarray(batch[name][i]), np.asarray(single[name]), rtol=1e-5, atol=1e-9,
                                           err_msg=name)
            sk = 1 if connectivity == 4 else 2
            assert int(batch["components"][i]) == measure.label(np.asarray(mask), connectivity=sk).max()


def test_explicit_threshold_float_images_and_constant_images():
    images = _digits_28()[:4].copy()
    images[3] = 50                                                  # constant: empty foreground under Otsu
    floats = images.astype(np.float32) / 255.0
    by_threshold = descriptors.describe(images[..., None], threshold=100)
    by_float = descriptors.describe(floats[..., None], threshold=100 / 255.0)
    for name in ("area", "components", "euler_number", "skeleton_length"):
        np.testing.assert_array_equal(np.asarray(by_threshold[name]), np.asarray(by_float[name]), err_msg=name)
    np.testing.assert_array_equal(np.asarray(by_threshold["area"]), (images > 100).sum((1, 2)))
    otsu = descriptors.describe(images[..., None])
    assert int(otsu["components"][3]) == 0 and float(otsu["area"][3]) == 0
    assert np.isnan(float(otsu["solidity"][3])) and float(otsu["std"][3]) == 0
    per_image = descriptors.describe(images[..., None], threshold=np.array([10, 100, 200, 0]))
    np.testing.assert_array_equal(np.asarray(per_image["area"]),
                                  [(images[i] > t).sum() for i, t in enumerate([10, 100, 200, 0])])


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
