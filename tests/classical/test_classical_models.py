"""Classifier pipelines (imputation of undefined descriptors) and the clustering scores."""

import numpy as np
import pytest

from cnnlab import classical
from _classical_digits import digits


def test_classifiers_learn_digits_and_impute_non_finite_values():
    images, labels = digits(400)
    features, _ = classical.descriptor_matrix(images)
    features[::7, 0] = np.nan
    features[::11, 1] = np.inf
    for name in classical.CLASSIFIERS:
        model = classical.make_classifier(name, seed=0, forest_trees=30, mlp_hidden=(32,), mlp_max_iter=300)
        scores = classical.fit_and_score(model, features[:300], labels[:300], features[300:], labels[300:])
        assert scores["test_accuracy"] > 0.35, (name, scores)         # chance is 0.1
        assert scores["train_time_s"] > 0 and scores["inference_s_per_1000"] > 0
    with pytest.raises(ValueError, match="Unknown classifier"):
        classical.make_classifier("knn")


def test_purity_and_clustering_scores():
    assert classical.purity([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert classical.purity([0, 0, 1, 1], [5, 5, 5, 5]) == 0.5
    assert classical.purity([0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 1]) == pytest.approx(4 / 6)   # 1 + 3 of 6
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 50)
    points = rng.normal(0, 0.1, (150, 2)) + np.array([[0, 0], [5, 5], [0, 9]])[labels]
    scores = classical.clustering_scores(points, labels, num_clusters=3, seed=0)
    assert scores["adjusted_rand_index"] == pytest.approx(1.0) and scores["purity"] == 1.0
