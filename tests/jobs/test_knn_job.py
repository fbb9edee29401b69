"""The kNN job end to end on digits: results schema field by field, pictures, final lines; its config."""

import os

import numpy as np
import pytest

from cnnlab import data, knn
from cnnlab.jobs import knn as knn_job
from cnnlab.jobs import workdir as workdir_lib
from experiments.configs import knn as knn_config


def test_config_arguments():
    config = knn_config.get_config("mnist,runlocal")
    assert config.kind == "knn" and config.dataset == "mnist" and config.cv_train_size == 2000
    assert knn_config.get_config("fashion_mnist").cv_train_size == 10_000
    assert knn_config.get_config("fashion_mnist").test_size == 0  # the full test split
    with pytest.raises(ValueError, match="'svhn'"):
        knn_config.get_config("svhn")
    with pytest.raises(ValueError, match="'runlcoal'. Did you mean 'runlocal'"):
        knn_config.get_config("digits,runlcoal")


def test_digits_end_to_end_fills_the_schema(tmp_path, capsys):
    config = knn_config.get_config("digits,runlocal")
    config.ks = (1, 3, 5)
    config.folds = 3
    config.cv_train_size = 600
    results = knn_job.run(config, str(tmp_path))
    for name in ("config.json", "results.json", "results.md", "neighbours.png", "regions.png", "cv_accuracy.png",
                 "regions_toy.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    saved = workdir_lib.Workdir(tmp_path).read_results()
    assert saved == results
    assert saved["kind"] == "knn" and saved["dataset"] == "digits"
    assert saved["splits"] == {"train": 1438, "validation": None, "test": 359}
    assert saved["test"]["count"] == 359 and saved["test"]["loss"] is None
    assert saved["chosen"]["k"] in (1, 3, 5) and saved["chosen"]["metric"] in ("l1", "l2")
    assert saved["chosen_text"] == f"k={saved['chosen']['k']}, {saved['chosen']['metric'].upper()}"
    details = saved["details"]
    assert saved["timing"]["train_s"] == pytest.approx(details["fit_time_s"] + details["cv_time_s"])
    assert saved["timing"]["compile_s"] > 0 and saved["timing"]["inference_s_per_1000"] > 0
    assert 1438 * 64 <= saved["model"]["bytes"] < 2 * 1438 * 64  # the stored uint8 images (+ block padding)
    assert saved["machine"]["usable_cores"] >= 1 and saved["software"]["jax"]
    cv = details["cross_validation"]
    assert np.asarray(cv["accuracy"]).shape == (3, 2, 3) and details["cv_train_size"] == 600
    assert details["cv_accuracy"] == pytest.approx(np.max(cv["mean"]))
    # The reported test accuracy is the accuracy of predict with the chosen pair on the full splits.
    train, test = data.load("digits", "train"), data.load("digits", "test")
    predicted = knn.predict(train.images, train.labels, test.images, k=saved["chosen"]["k"],
                            metric=saved["chosen"]["metric"])
    assert saved["test"]["accuracy"] == pytest.approx(np.mean(predicted == test.labels))
    assert saved["test"]["accuracy"] > 0.95
    table = (tmp_path / "results.md").read_text()
    assert "| digits |" in table and f"{saved['test']['accuracy']:.4f}" in table
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("kNN on digits: k=") and lines[-2].endswith(f"{saved['test']['accuracy']:.4f}")
    assert lines[-1] == f"Results: {tmp_path}/results.json  Report: {tmp_path}/results.md"


def test_cifar10_without_files_says_how_to_install(tmp_path):
    config = knn_config.get_config("cifar10,runlocal")
    config.data_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="cifar"):
        knn_job.run(config, str(tmp_path / "work"))
