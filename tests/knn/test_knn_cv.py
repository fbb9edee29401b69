"""cnnlab.knn.cv: fold split, accuracies against the brute-force reference, argument checks."""

import numpy as np
import pytest

from _knn_reference import reference_nearest
from cnnlab import knn


def test_cross_validate_structure_and_values():
    rng = np.random.default_rng(5)
    centres = rng.integers(0, 256, (3, 16))
    labels = np.repeat(np.arange(3), 30)
    points = np.clip(centres[labels] + rng.integers(-90, 90, (90, 16)), 0, 255).astype(np.uint8)
    ks, metrics = [1, 3, 7], ["l1", "l2"]
    cv = knn.cross_validate(points, labels, ks=ks, metrics=metrics, folds=3, seed=7)
    assert cv.accuracy.shape == (3, 2, 3) and cv.mean.shape == cv.std.shape == (3, 2)
    parts = knn.fold_indices(90, 3, 7)
    assert sorted(np.concatenate(parts).tolist()) == list(range(90))
    assert {len(p) for p in parts} == {30}
    # Every (k, metric, fold) against the brute-force reference with the "nearest" tie rule.
    for f, held in enumerate(parts):
        keep = np.setdiff1d(np.arange(90), held)
        for m, metric in enumerate(metrics):
            _, idx = reference_nearest(points[keep], points[held], 7, metric)
            for j, k in enumerate(ks):
                want = np.asarray(knn.vote(labels[keep][idx[:, :k]], 3, tie_break="nearest"))
                assert cv.accuracy[j, m, f] == pytest.approx(np.mean(want == labels[held]))
    np.testing.assert_allclose(cv.mean, cv.accuracy.mean(2))
    np.testing.assert_allclose(cv.std, cv.accuracy.std(2))
    assert cv.best_accuracy == pytest.approx(cv.mean.max())
    assert cv.mean[ks.index(cv.best_k), metrics.index(cv.best_metric)] == cv.best_accuracy
    assert 0.5 < cv.best_accuracy <= 1.0
    summary = cv.to_dict()
    assert summary["best"] == {"k": cv.best_k, "metric": cv.best_metric, "mean_accuracy": cv.best_accuracy}
    again = knn.cross_validate(points, labels, ks=ks, metrics=metrics, folds=3, seed=7)
    np.testing.assert_array_equal(again.accuracy, cv.accuracy)

def test_cross_validate_rejects_non_integer_ks_and_takes_one_metric_name():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 6)).astype(np.uint8)
    y = np.arange(30) % 3
    for ks in ((1, 2.5), (1, True), [np.float64(3.0)], "135"):
        with pytest.raises(TypeError, match="ks must"):
            knn.cross_validate(x, y, ks=ks, folds=3)
    one = knn.cross_validate(x, y, ks=[1, 3], metrics="l1", folds=3)
    assert one.metrics == ["l1"]
    np.testing.assert_array_equal(one.accuracy, knn.cross_validate(x, y, ks=[1, 3], metrics=["l1"], folds=3).accuracy)
    assert knn.cross_validate(x, y, ks=np.array([1, 3]), metrics=("l2",), folds=3).ks == [1, 3]
    with pytest.raises(ValueError, match="Unknown metric"):
        knn.cross_validate(x, y, ks=[1], metrics=["l1", "cosine"], folds=3)
    with pytest.raises(ValueError, match="query_block must be a positive integer"):
        knn.cross_validate(x, y, ks=[1], folds=3, query_block=0)
