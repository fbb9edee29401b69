"""cnnlab.knn.vote: tie rules, predict against scikit-learn, label checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from _knn_reference import reference_nearest
from cnnlab import knn


def test_vote_tie_breaks():
    # Neighbours (nearest first) of one query: labels 3, 1, 1, 3 -> a 2-2 tie between classes 1 and 3.
    labels = np.array([[3, 1, 1, 3], [2, 2, 0, 0], [0, 1, 2, 2]])
    np.testing.assert_array_equal(np.asarray(knn.vote(labels, 4, tie_break="nearest")), [3, 2, 2])
    np.testing.assert_array_equal(np.asarray(knn.vote(labels, 4, tie_break="smallest_label")), [1, 0, 2])


def test_predict_tie_break_on_a_line():
    train = np.array([[0], [1], [2], [3], [10]], np.int32)
    labels = np.array([5, 2, 2, 5, 7])
    query = np.array([[1]], np.int32)  # nearest: 1 (label 2); k=4 -> two 2s and two 5s
    assert knn.predict(train, labels, query, k=4, metric="l1", tie_break="nearest")[0] == 2
    assert knn.predict(train, labels, query, k=4, metric="l1", tie_break="smallest_label")[0] == 2
    query = np.array([[0]], np.int32)  # nearest 0 (label 5), then 1 (2), 2 (2), 3 (5): tie 2 vs 5
    assert knn.predict(train, labels, query, k=4, metric="l1", tie_break="nearest")[0] == 5
    assert knn.predict(train, labels, query, k=4, metric="l1", tie_break="smallest_label")[0] == 2


@pytest.mark.parametrize("metric, sklearn_metric", [("l1", "manhattan"), ("l2", "euclidean")])
def test_smallest_label_predictions_equal_sklearn_brute(metric, sklearn_metric):
    """Many k, with vote ties (4 classes, even k) and distance ties (values 0..15, 8 features). When the k-th and
    (k+1)-th distances are equal the k nearest are not unique and scikit-learn's pick depends on its partition
    order, so queries are compared where the k nearest are well defined (most of them) -- all of them on data
    without such ties."""
    rng = np.random.default_rng(4)
    train = rng.integers(0, 16, (400, 8)).astype(np.uint8)
    labels = rng.integers(0, 4, 400) * 3 + 1  # labels 1, 4, 7, 10: not 0..C-1
    queries = rng.integers(0, 16, (150, 8)).astype(np.uint8)
    want_d, _ = reference_nearest(train, queries, 41, metric)
    ks = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40]
    _, idx = knn.nearest(train, queries, k=40, metric=metric)
    classes, encoded = np.unique(labels, return_inverse=True)
    vote_ties = compared = tied_inside = 0
    for k in ks:
        ours = classes[np.asarray(knn.vote(encoded[np.asarray(idx)[:, :k]], 4, tie_break="smallest_label"))]
        theirs = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric=sklearn_metric).fit(train, labels)
        theirs = theirs.predict(queries)
        defined = want_d[:, k - 1] < want_d[:, k]
        np.testing.assert_array_equal(ours[defined], theirs[defined], err_msg=f"k={k}")
        compared += defined.sum()
        tied_inside += ((want_d[:, : k - 1] == want_d[:, 1:k]).any(1) & defined).sum()
        counts = np.stack([(labels[np.asarray(idx)[:, :k]] == c).sum(1) for c in classes], 1)
        vote_ties += ((counts == counts.max(1, keepdims=True)).sum(1) > 1)[defined].sum()
    assert compared > 0.3 * len(ks) * len(queries)
    assert vote_ties > 100 and tied_inside > 300  # both kinds of ties among the compared predictions
    # predict itself (not only vote on a prefix) for a few k, on continuous-valued images (no distance ties).
    train = rng.integers(0, 256, (300, 64)).astype(np.uint8)
    queries = rng.integers(0, 256, (60, 64)).astype(np.uint8)
    labels = rng.integers(0, 3, 300)
    for k in (2, 4, 9):
        theirs = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric=sklearn_metric).fit(train, labels)
        ours = knn.predict(train, labels, queries, k=k, metric=metric, tie_break="smallest_label")
        np.testing.assert_array_equal(ours, theirs.predict(queries))

def test_vote_rejects_labels_outside_the_class_range():
    with pytest.raises(ValueError, match=r"label 4, outside the valid range \[0, 4\)"):
        knn.vote(np.array([[0, 4, 1]]), 4)
    with pytest.raises(ValueError, match=r"label -1, outside the valid range \[0, 3\)"):
        knn.vote(jnp.array([[2, -1]]), 3)
    with pytest.raises(TypeError, match="integer class indices"):
        knn.vote(np.array([[0.0, 1.0]]), 2)
    with pytest.raises(ValueError, match=r"\[Q, k\]"):
        knn.vote(np.array([0, 1]), 2)
    # Under jit the labels are not known on the host: vote stays traceable (the documented limitation).
    voted = jax.jit(lambda labels: knn.vote(labels, 3, tie_break="smallest_label"))(jnp.array([[2, 1, 1]]))
    np.testing.assert_array_equal(np.asarray(voted), [1])
