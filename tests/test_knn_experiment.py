"""The kNN experiment end to end on digits, its config, and the neighbour pictures."""

import json
import os

import numpy as np
import pytest

from cnnlab import knn, knn_experiment
from cnnlab.report import neighbours
from experiments.configs import knn as knn_config


def test_config_arguments():
    config = knn_config.get_config("mnist,runlocal")
    assert config.kind == "knn" and config.dataset == "mnist" and config.cv_train_size == 2000
    assert knn_config.get_config("fashion_mnist").cv_train_size == 10_000
    assert knn_config.get_config("fashion_mnist").test_size == 0  # the full test split
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
        knn_config.get_config("svhn")
    with pytest.raises(ValueError, match="only option is 'runlocal'"):
        knn_config.get_config("digits,fast")


def test_digits_runlocal_end_to_end(tmp_path):
    config = knn_config.get_config("digits,runlocal")
    config.ks = (1, 3, 5)
    results = knn_experiment.run(config, str(tmp_path))
    for name in ("config.json", "results.json", "results.md", "neighbours.png", "regions.png", "cv_accuracy.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in ("test_accuracy", "k", "metric", "fit_time_s", "cv_time_s", "inference_s_per_1000", "device"):
        assert key in saved
    assert saved["k"] in (1, 3, 5) and saved["metric"] in ("l1", "l2")
    assert saved["test_size"] == 359 and saved["train_size"] == 1438
    assert saved["test_accuracy"] > 0.95  # kNN on 8x8 digits: about 0.98-0.99
    cv = saved["cross_validation"]
    assert np.asarray(cv["accuracy"]).shape == (3, 2, 5)
    assert saved["cv_accuracy"] == pytest.approx(np.max(cv["mean"]))
    # The reported test accuracy is the accuracy of predict with the chosen pair on the full splits.
    from cnnlab import data

    train, test = data.load("digits", "train"), data.load("digits", "test")
    predicted = knn.predict(train.images, train.labels, test.images, k=saved["k"], metric=saved["metric"])
    assert saved["test_accuracy"] == pytest.approx(np.mean(predicted == test.labels))
    table = (tmp_path / "results.md").read_text()
    assert "| digits |" in table and f"{saved['test_accuracy']:.4f}" in table
    assert results["test_accuracy"] == saved["test_accuracy"]


def test_cifar10_without_files_says_how_to_install(tmp_path):
    config = knn_config.get_config("cifar10,runlocal")
    config.data_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="cifar"):
        knn_experiment.run(config, str(tmp_path / "work"))


def test_decision_grid_matches_bruteforce_and_marks_ties(tmp_path):
    points, labels = neighbours.toy_2d_dataset(seed=1)
    assert points.shape == (60, 2) and set(labels.tolist()) == {0, 1, 2}
    for k, metric in ((1, "l2"), (5, "l1")):
        xs, ys, predicted, tied = neighbours.decision_grid(points, labels, k=k, metric=metric, resolution=40)
        grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
        diff = grid[:, None, :] - points[None].astype(np.float64)
        dist = np.abs(diff).sum(-1) if metric == "l1" else np.sqrt((diff ** 2).sum(-1))
        order = np.lexsort((np.broadcast_to(np.arange(60), dist.shape), dist), axis=-1)[:, :k]
        counts = np.stack([(labels[order] == c).sum(1) for c in range(3)], 1)
        want_tied = (counts == counts.max(1, keepdims=True)).sum(1) > 1
        np.testing.assert_array_equal(tied.ravel(), want_tied)
        if k == 1:
            np.testing.assert_array_equal(predicted.ravel(), labels[order[:, 0]])
            assert not tied.any()
        else:
            assert tied.any()  # k=5 with 3 classes: 2-2-1 votes exist
    out = neighbours.plot_decision_regions(points, labels, str(tmp_path / "regions.png"), resolution=30)
    assert os.path.getsize(out) > 10_000


def test_neighbour_grid_and_cv_plot_files(tmp_path):
    rng = np.random.default_rng(0)
    queries = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    neighbour_images = rng.integers(0, 256, (3, 10, 8, 8, 1), dtype=np.uint8)
    out = neighbours.plot_neighbours(queries, np.array([0, 1, 2]), neighbour_images, rng.integers(0, 3, (3, 10)),
                                     str(tmp_path / "grid.png"), class_names=["a", "b", "c"])
    assert os.path.getsize(out) > 10_000
    with pytest.raises(ValueError, match="labels must be"):
        neighbours.plot_neighbours(queries, np.array([0, 1]), neighbour_images, rng.integers(0, 3, (3, 10)),
                                   str(tmp_path / "bad.png"))
    cv = {"ks": [1, 3], "metrics": ["l1", "l2"], "folds": 5, "mean": [[0.9, 0.91], [0.92, 0.9]],
          "std": [[0.01, 0.02], [0.01, 0.01]], "best": {"k": 3, "metric": "l1", "mean_accuracy": 0.92}}
    assert os.path.getsize(neighbours.plot_cv_accuracy(cv, str(tmp_path / "cv.png"))) > 10_000
