"""Feature matrices: the descriptor matrix (batched, padded), pixels, and the feature sets the job fits on."""

import numpy as np
import pytest

from cnnlab import classical, descriptors
from _classical_digits import digits


def test_descriptor_matrix_columns_and_padding():
    images, _ = digits(128)
    direct = descriptors.describe(images)
    matrix, names = classical.descriptor_matrix(images[:100])     # one batch of 128, the last 28 rows padding
    assert matrix.shape == (100, len(descriptors.NAMES)) and names == list(descriptors.NAMES)
    for j, name in enumerate(names):
        np.testing.assert_allclose(matrix[:, j], np.asarray(direct[name][:100], np.float64), rtol=1e-5, atol=1e-9,
                                   equal_nan=True)
    only, only_names = classical.descriptor_matrix(images[:100], families=("statistical",))
    assert only_names == list(descriptors.FAMILIES["statistical"]) and only.shape == (100, 6)
    np.testing.assert_array_equal(only, matrix[:, -6:])
    with pytest.raises(ValueError, match="Unknown descriptor families"):
        classical.descriptor_matrix(images, families=("colour",))
    with pytest.raises(ValueError, match=r"\[N, H, W, 1\]"):
        classical.descriptor_matrix(images[..., 0])


def test_feature_sets_are_column_blocks_of_one_descriptor_matrix():
    images, _ = digits(100)                                         # the batch shape (128) compiled above
    sets, names, descriptor_s = classical.feature_sets(images, families=("topological", "statistical"))
    assert set(sets) == {"descriptors", "pixels", "both", "topological", "statistical"}
    matrix, pixels = sets["descriptors"][0], sets["pixels"][0]
    assert matrix.shape == (100, 29) and pixels.shape == (100, 64) and names == list(descriptors.NAMES)
    np.testing.assert_array_equal(pixels, images.reshape(100, -1) / 255.0)
    np.testing.assert_array_equal(sets["both"][0], np.concatenate([matrix, pixels], axis=1))
    np.testing.assert_array_equal(sets["topological"][0], matrix[:, :6])
    np.testing.assert_array_equal(sets["statistical"][0], matrix[:, -6:])
    assert descriptor_s == sets["descriptors"][1] > 0 and sets["both"][1] >= descriptor_s
