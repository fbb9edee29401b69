"""End-to-end training runs on tiny data: one step, a few epochs, workdir outputs, bfloat16, 1 vs 8 devices."""

import json
import os

import jax
import numpy as np
import pytest

from cnnlab import data
from cnnlab.jobs import train_and_evaluate
from cnnlab.jobs import workdir as workdir_lib
from _train_helpers import records


def test_one_step_run_writes_every_output(tmp_path, make_config):
    workdir = str(tmp_path / "run")
    results = train_and_evaluate(make_config(num_train_steps=1, report=True), workdir)

    test = data.load("digits", "test")
    assert results["test"]["count"] == len(test.labels) == 359  # the padded last eval batch is masked out
    confusion = np.array(results["details"]["eval_confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 359
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(test.labels, minlength=10))
    assert results["test"]["accuracy"] == pytest.approx(np.trace(confusion) / 359)
    per_class = np.diag(confusion) / confusion.sum(1)
    np.testing.assert_allclose(results["details"]["eval_per_class_accuracy"], per_class)
    assert 0 <= results["test"]["accuracy"] <= results["test"]["top5_accuracy"] <= 1
    assert np.isfinite(results["test"]["loss"])
    assert results["details"]["steps"] == 1 and results["model"]["num_params"] == 61706
    assert results["kind"] == "train" and results["dataset"] == "digits" and results["model"]["name"] == "lenet5"
    assert results["splits"] == {"train": 1438, "validation": None, "test": 359}
    for key in ("train_s", "compile_s", "inference_s_per_1000", "wall_s"):
        assert results["timing"][key] > 0, key
    assert results["details"]["devices"].startswith("1 x")

    on_disk = workdir_lib.check_results(json.load(open(os.path.join(workdir, "results.json"))))
    assert on_disk["test"] == results["test"]
    assert json.load(open(os.path.join(workdir, "config.json")))["model"] == "lenet5"
    logged = records(workdir)
    assert [r["step"] for r in logged] == [1, 1]
    assert "train_loss" in logged[0] and "eval_accuracy" in logged[1] and "eval_loss" in logged[1]
    for name in ("curves.png", "confusion.png", "filters.png", "feature_maps.png", "report.md"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert results["details"]["report"] == os.path.join(workdir, "report.md")
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]


def test_few_epochs_learn_digits(tmp_path, make_config):
    config = make_config(num_epochs=3, schedule="cosine", warmup_epochs=0.5, checkpoint_every_steps=22,
                         log_every_steps=11)
    workdir = str(tmp_path / "run")
    results = train_and_evaluate(config, workdir)
    assert results["test"]["accuracy"] > 0.85  # chance is 0.10
    logged = records(workdir)
    evals = [r for r in logged if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [44, 88, 132]  # one evaluation per epoch
    train = [r for r in logged if "train_loss" in r]
    assert train[-1]["train_loss"] < train[0]["train_loss"]
    assert all(0 < r["learning_rate"] <= 0.05 for r in train)
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps[-1] == 132 and len(steps) <= 3  # keep 2 latest + the best


def test_bfloat16_compute_keeps_float32_params(tmp_path, make_config):
    results = train_and_evaluate(make_config(num_train_steps=8, dtype="bfloat16"), str(tmp_path / "run"))
    assert np.isfinite(results["test"]["loss"])
    from cnnlab.train import checkpoint as checkpoint_lib

    ckpt = checkpoint_lib.Checkpoints(str(tmp_path / "run" / "checkpoints"))
    meta = ckpt.manager.item_metadata(8)["state"]
    assert {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(meta["params"])} == {np.dtype(np.float32)}
    ckpt.close()


def test_same_result_on_one_and_eight_devices(tmp_path, make_config):
    """Data parallelism over 8 simulated devices gives the 1-device result (same global batch) to float tolerance;
    3 optimizer steps per dispatch (a scan) on both."""
    results = {}
    for n in (1, 8):
        config = make_config(num_train_steps=12, num_devices=n, augment=True, learning_rate=0.02,
                             steps_per_dispatch=3, log_every_steps=6)
        results[n] = train_and_evaluate(config, str(tmp_path / f"run{n}"))
    assert results[1]["details"]["devices"].startswith("1 x")
    assert results[8]["details"]["devices"].startswith("8 x")
    assert results[8]["test"]["loss"] == pytest.approx(results[1]["test"]["loss"], rel=1e-4)
    assert abs(results[8]["test"]["accuracy"] - results[1]["test"]["accuracy"]) <= 2 / 359
