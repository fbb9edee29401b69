"""cnnlab.knn.Index: same answers as nearest/predict, the training set checked and placed once, errors."""

import numpy as np
import pytest

from _knn_reference import one_device_mesh, reference_nearest
from cnnlab import knn
from cnnlab.knn import search


def _data(dtype=np.uint8, n=230, dim=20, seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return rng.normal(size=(n, dim)).astype(dtype), rng.integers(0, 4, n) * 2 + 3
    return rng.integers(0, 256, (n, dim)).astype(dtype), rng.integers(0, 4, n) * 2 + 3  # labels 3, 5, 7, 9


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_index_answers_equal_nearest_and_predict_for_several_batches(dtype):
    train_x, train_y = _data(dtype)
    index = knn.Index(train_x, train_y)
    rng = np.random.default_rng(1)
    for size, k, metric in ((17, 5, "l2"), (17, 5, "l1"), (40, 1, "l2"), (3, 9, "l1")):
        queries, _ = _data(dtype, n=size, seed=int(rng.integers(1 << 30)))
        d, i = index.nearest(queries, k=k, metric=metric)
        want_d, want_i = knn.nearest(train_x, queries, k=k, metric=metric)
        np.testing.assert_array_equal(np.asarray(i), np.asarray(want_i))
        np.testing.assert_array_equal(np.asarray(d), np.asarray(want_d))
        np.testing.assert_array_equal(np.asarray(i), reference_nearest(train_x, queries, k, metric)[1])
        for tie_break in knn.TIE_BREAKS:
            got = index.predict(queries, k=k, metric=metric, tie_break=tie_break)
            want = knn.predict(train_x, train_y, queries, k=k, metric=metric, tie_break=tie_break)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_index_places_and_scans_the_training_set_once(monkeypatch):
    train_x, train_y = _data(np.int16)  # int16: the value range needs a scan of the data (uint8 would too)
    placed, scanned = [], []
    real_place, real_range = search.place_train, search.value_range
    monkeypatch.setattr(search, "place_train", lambda x, mesh: placed.append(x.shape) or real_place(x, mesh))
    monkeypatch.setattr(search, "value_range", lambda x: scanned.append(x.shape) or real_range(x))
    index = knn.Index(train_x, train_y)
    buffer = index.train_placed
    assert train_x.min() == 0 and train_x.max() == 255
    misses = None
    for batch in range(4):
        queries = _data(np.int16, n=25, seed=3 + batch)[0]  # same shape, values inside the training set's range
        index.nearest(queries, k=4, metric="l1")
        index.predict(queries, k=4, metric="l1")
        if batch == 0:
            misses = search.compiled_search.cache_info().misses
    assert placed == [train_x.shape]
    assert scanned.count(train_x.shape) == 1 and scanned.count(queries.shape) == 8
    assert index.train_placed is buffer
    assert search.compiled_search.cache_info().misses == misses  # later batches reuse the compiled search


def test_index_attributes():
    train_x = np.zeros((203, 4, 5), np.uint8)
    index = knn.Index(train_x, np.arange(203) % 3 + 10)
    assert index.num_train == 203 and index.feature_shape == (4, 5)
    assert index.nbytes == 208 * 20  # one copy, padded to 8 devices x 26 rows
    np.testing.assert_array_equal(index.classes, [10, 11, 12])
    assert knn.Index(train_x, mesh=one_device_mesh()).nbytes == 203 * 20
    assert knn.Index(train_x).classes is None


def test_index_errors():
    train_x, train_y = _data()
    index = knn.Index(train_x, train_y)
    with pytest.raises(ValueError, match="queries have 21 features"):
        index.nearest(np.zeros((3, 21), np.uint8), k=1)
    with pytest.raises(ValueError, match=r"k must be between 1 and the number of training points \(230\)"):
        index.predict(train_x[:2], k=231)
    with pytest.raises(ValueError, match="no labels"):
        knn.Index(train_x).predict(train_x[:2], k=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        knn.Index(train_x.astype(np.float32)).nearest(np.full((1, 20), np.nan, np.float32), k=1)
    with pytest.raises(ValueError, match="one label per training point"):
        knn.Index(train_x, train_y[:-1])
    with pytest.raises(ValueError, match="Unknown metric"):
        index.nearest(train_x[:2], k=1, metric="l3")
    with pytest.raises(ValueError, match="query_block must be a positive integer"):
        index.nearest(train_x[:2], k=1, query_block=0)
