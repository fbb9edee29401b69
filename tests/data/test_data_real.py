"""The real Fashion-MNIST and MNIST, as prepared by `python -m cnnlab.data prepare --all` in the default
data_dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets). Read only; skipped with the reason when not prepared."""

import numpy as np
import pytest

from cnnlab import data
from cnnlab.data import builders

# Published class counts of the official MNIST files (LeCun et al.; e.g. the per-digit table reproduced in
# most MNIST descriptions): digits 0..9.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# Fashion-MNIST (Zalando README): 6,000 training and 1,000 test images per class.
FASHION_TRAIN_COUNTS = [6000] * 10
FASHION_TEST_COUNTS = [1000] * 10


def _require_prepared(name):
    if not data.is_prepared(name):
        pytest.skip(f"{name} is not prepared in {builders.default_data_dir()}: run "
                    f"`python -m cnnlab.data prepare {name}` (or `bash scripts/install.sh`)")


def _raw_splits(name):
    location = builders.SPECS[name].find_raw(builders.default_manual_dir())
    if location is None:
        pytest.skip(f"raw files of {name} not found; to install: {builders.SPECS[name].install_hint}")
    return location.read().splits


@pytest.mark.parametrize("name, train_counts, test_counts", [
    ("mnist", MNIST_TRAIN_COUNTS, MNIST_TEST_COUNTS),
    ("fashion_mnist", FASHION_TRAIN_COUNTS, FASHION_TEST_COUNTS)])
def test_real_dataset_counts_pixels_and_stats(name, train_counts, test_counts):
    _require_prepared(name)
    train, test = data.load(name, "train"), data.load(name, "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), train_counts)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), test_counts)
    # Pixel-identical to the raw files, in the official order.
    raw = _raw_splits(name)
    for split, ds in (("train", train), ("test", test)):
        np.testing.assert_array_equal(ds.images, raw[split].images)
        np.testing.assert_array_equal(ds.labels, raw[split].labels)
    # Train-split statistics computed at prepare time agree with the published values (to 4 decimals).
    info = data.info(name)
    spec = builders.SPECS[name]
    np.testing.assert_allclose(info.mean, spec.published_mean, atol=6e-5)
    np.testing.assert_allclose(info.std, spec.published_std, atol=6e-5)
    pixels = train.images.astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, [pixels.mean()], rtol=1e-9)
    np.testing.assert_allclose(info.std, [pixels.std()], rtol=1e-9)


def test_real_validation_slices():
    _require_prepared("fashion_mnist")
    head = data.load("fashion_mnist", "train[:90%]")
    tail = data.load("fashion_mnist", "train[90%:]")
    assert (len(head), len(tail)) == (54000, 6000)
    first = data.load("fashion_mnist", "test[:1000]")
    full = data.load("fashion_mnist", "test")
    np.testing.assert_array_equal(first.images, full.images[:1000])
