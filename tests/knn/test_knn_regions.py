"""cnnlab.knn.regions (decision grids, PCA decision regions) and their pictures in cnnlab.report.neighbours."""

import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cnnlab import knn
from cnnlab.report import neighbours


def _brute_votes(grid, points, labels, k, metric, num_classes):
    diff = grid[:, None, :].astype(np.float64) - points[None].astype(np.float64)
    dist = np.abs(diff).sum(-1) if metric == "l1" else np.sqrt((diff ** 2).sum(-1))
    order = np.lexsort((np.broadcast_to(np.arange(len(points)), dist.shape), dist), axis=-1)[:, :k]
    counts = np.stack([(labels[order] == c).sum(1) for c in range(num_classes)], 1)
    return order, counts


def test_decision_grid_matches_bruteforce_and_marks_ties(tmp_path):
    points, labels = knn.toy_2d_dataset(seed=1)
    assert points.shape == (60, 2) and set(labels.tolist()) == {0, 1, 2}
    panels = []
    for k, metric in ((1, "l2"), (5, "l1")):
        regions = knn.decision_grid(points, labels, k=k, metric=metric, resolution=40)
        grid = np.stack(np.meshgrid(regions.grid_x, regions.grid_y), -1).reshape(-1, 2).astype(np.float32)
        order, counts = _brute_votes(grid, points, labels, k, metric, 3)
        np.testing.assert_array_equal(regions.vote_tied.ravel(), (counts == counts.max(1, keepdims=True)).sum(1) > 1)
        if k == 1:
            np.testing.assert_array_equal(regions.labels.ravel(), labels[order[:, 0]])
            assert not regions.vote_tied.any()
        else:
            assert regions.vote_tied.any()  # k=5 with 3 classes: 2-2-1 votes exist
            assert (regions.labels >= 0).all()  # "nearest" decides every tie
        panels.append(regions)
    out = neighbours.plot_toy_decision_regions(panels, str(tmp_path / "regions_toy.png"))
    assert os.path.getsize(out) > 10_000
    with pytest.raises(ValueError, match="points must be \\[N, 2\\]"):
        knn.decision_grid(np.zeros((5, 3)), np.zeros(5, int), k=1, metric="l2")


def test_decision_regions_projects_with_pca_and_votes_in_the_plane(tmp_path):
    digits = load_digits()
    images, targets = digits.images, digits.target + 10  # labels 10..19: classes must be kept apart from -1
    regions = knn.decision_regions(images, targets, k=3, metric="l1", tie_break="smallest_label", resolution=50,
                                   max_points=600, seed=3)
    assert regions.labels.shape == (50, 50) and regions.points.shape == (600, 2)
    assert regions.num_train == len(images) and list(regions.classes) == list(range(10, 20))
    # The subsample is seeded, the projection is numpy's SVD of the centred subsample.
    chosen = np.sort(np.random.default_rng(3).choice(len(images), 600, replace=False))
    flat = images.reshape(len(images), -1)[chosen]
    centred = flat - flat.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(regions.explained_variance_ratio, singular[:2] ** 2 / (singular ** 2).sum())
    np.testing.assert_allclose(np.abs(regions.components), np.abs(vt[:2]), atol=1e-12)
    np.testing.assert_allclose(regions.points, (flat - regions.mean) @ regions.components.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(regions.classes[regions.point_labels], targets[chosen])
    # Every grid label is the smallest-label vote of the 3 nearest projected points (L1 in the plane).
    grid = np.stack(np.meshgrid(regions.grid_x, regions.grid_y), -1).reshape(-1, 2).astype(np.float32)
    _, counts = _brute_votes(grid, regions.points, regions.point_labels, 3, "l1", 10)
    np.testing.assert_array_equal(regions.labels.ravel(), counts.argmax(1))
    assert regions.grid_x[0] < regions.points[:, 0].min() and regions.grid_x[-1] > regions.points[:, 0].max()
    out = neighbours.plot_decision_regions(regions, str(tmp_path / "regions.png"),
                                           class_names=[f"digit {i - 10}" for i in range(20)])
    assert os.path.getsize(out) > 20_000
    with pytest.raises(ValueError, match="k must be between 1 and the number of training points \\(600\\)"):
        knn.decision_regions(images, targets, k=601, metric="l2", max_points=600)
    with pytest.raises(ValueError, match="resolution must be an integer >= 2"):
        knn.decision_regions(images, targets, k=1, metric="l2", resolution=1)
    with pytest.raises(ValueError, match="Unknown tie_break"):
        knn.decision_regions(images, targets, k=1, metric="l2", tie_break="random")


def test_decision_regions_of_one_feature_and_too_many_classes():
    x = np.arange(30, dtype=np.float32)[:, None]
    regions = knn.decision_regions(x, np.arange(30) % 2, k=1, metric="l2", resolution=10)
    assert regions.explained_variance_ratio[1] == 0 and np.ptp(regions.points[:, 1]) == 0
    assert regions.grid_y[0] < regions.grid_y[-1]  # a flat axis still spans a band
    many = knn.decision_regions(np.random.default_rng(0).normal(size=(60, 3)), np.arange(60) % 21, k=1,
                                metric="l2", resolution=5)
    with pytest.raises(ValueError, match="at most 20 classes"):
        neighbours.plot_decision_regions(many, "/nonexistent/never_written.png")
