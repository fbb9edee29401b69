"""End-to-end training runs on tiny data: one step, a few epochs, workdir outputs, bfloat16, 1 vs 8 devices."""

import json
import os

import jax
import numpy as np
import pytest

from cnnlab import data
from cnnlab.train import train_and_evaluate


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_one_step_run_writes_every_output(tmp_path, make_config):
    workdir = str(tmp_path / "run")
    config = make_config(num_train_steps=1, report=True)
    results = train_and_evaluate(config, workdir)

    test = data.load("digits", "test")
    assert results["eval_count"] == len(test.labels) == 359  # the padded last eval batch is masked out
    confusion = np.array(results["eval_confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 359
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(test.labels, minlength=10))
    assert results["eval_accuracy"] == pytest.approx(np.trace(confusion) / 359)
    per_class = np.diag(confusion) / confusion.sum(1)
    np.testing.assert_allclose(results["eval_per_class_accuracy"], per_class)
    assert 0 <= results["eval_accuracy"] <= results["eval_top5_accuracy"] <= 1
    assert results["steps"] == 1 and results["num_params"] == 61706
    for key in ("train_time_s", "inference_s_per_1000", "device", "eval_loss"):
        assert key in results
    assert results["device"].startswith("8 x")

    on_disk = json.load(open(os.path.join(workdir, "results.json")))
    assert on_disk["eval_accuracy"] == results["eval_accuracy"]
    assert json.load(open(os.path.join(workdir, "config.json")))["model"] == "lenet5"
    records = _records(workdir)
    assert [r["step"] for r in records] == [1, 1]
    assert "train_loss" in records[0] and "eval_accuracy" in records[1] and "eval_loss" in records[1]
    for name in ("curves.png", "confusion.png", "filters.png", "feature_maps.png", "report.md"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert results["report"] == os.path.join(workdir, "report.md")
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]


def test_few_epochs_learn_digits(tmp_path, make_config):
    config = make_config(num_epochs=3, schedule="cosine", warmup_epochs=0.5, checkpoint_every_steps=20)
    workdir = str(tmp_path / "run")
    results = train_and_evaluate(config, workdir)
    assert results["eval_accuracy"] > 0.85  # chance is 0.10
    records = _records(workdir)
    evals = [r for r in records if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [44, 88, 132]  # one evaluation per epoch
    train = [r for r in records if "train_loss" in r]
    assert train[-1]["train_loss"] < train[0]["train_loss"]
    assert all(0 < r["learning_rate"] <= 0.05 for r in train)
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    assert steps[-1] == 132 and len(steps) <= 3  # keep 2 latest + the best


def test_bfloat16_compute_keeps_float32_params(tmp_path, make_config):
    config = make_config(num_train_steps=8, dtype="bfloat16")
    results = train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(results["eval_loss"])
    from cnnlab.train import checkpoint as checkpoint_lib

    ckpt = checkpoint_lib.Checkpoints(str(tmp_path / "run" / "checkpoints"))
    meta = ckpt.manager.item_metadata(8)["state"]
    assert {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(meta["params"])} == {np.dtype(np.float32)}
    ckpt.close()


def test_same_result_on_one_and_eight_devices(tmp_path, make_config):
    """Data parallelism over 8 simulated devices gives the 1-device result (same global batch) to float tolerance."""
    results = {}
    for n in (1, 8):
        config = make_config(num_train_steps=12, num_devices=n, augment=True, learning_rate=0.02)
        results[n] = train_and_evaluate(config, str(tmp_path / f"run{n}"))
    assert results[1]["device"].startswith("1 x") and results[8]["device"].startswith("8 x")
    assert results[8]["eval_loss"] == pytest.approx(results[1]["eval_loss"], rel=1e-4)
    assert abs(results[8]["eval_accuracy"] - results[1]["eval_accuracy"]) <= 2 / 359
