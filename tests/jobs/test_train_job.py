"""The train job in the JOBS table: dispatch by config.kind, the results.json schema it fills, the files it writes,
and what it refuses before writing anything."""

import json
import os

import pytest

from cnnlab import jobs
from cnnlab.jobs import workdir as workdir_lib
from experiments.configs import common


def _tiny(**overrides):
    """LeNet-5 on sklearn's digits zero-padded to 28x28, one device, one step per dispatch."""
    c = common.base_config()
    c.update(dict(dataset="digits", image_size=28, model="lenet5", num_train_steps=3, batch_size=32,
                  eval_batch_size=120, learning_rate=0.05, log_every_steps=1, checkpoint_every_steps=0, report=False,
                  num_devices=1))
    c.update(overrides)
    return c


def test_train_is_the_default_job_and_fills_the_results_schema(tmp_path):
    assert jobs.JOBS["train"] is jobs.train_and_evaluate
    config = _tiny()
    del config["kind"]  # no kind: the train job
    workdir = str(tmp_path / "run")
    results = jobs.run(config, workdir)

    on_disk = workdir_lib.check_results(json.load(open(os.path.join(workdir, "results.json"))))
    assert on_disk["test"] == results["test"] and on_disk["kind"] == "train" == results["kind"]
    assert results["splits"] == {"train": 1438, "validation": None, "test": 359}
    assert results["model"]["name"] == "lenet5" and results["model"]["num_params"] == 61706
    assert results["model"]["bytes"] == 4 * 61706  # float32 parameters, no batch statistics
    timing = results["timing"]
    assert timing["compile_s"] > 0 and timing["train_s"] > 0 and timing["inference_s_per_1000"] > 0
    assert timing["train_s"] + timing["compile_s"] <= timing["wall_s"]
    details = results["details"]
    assert details["steps"] == 3 and details["devices"].startswith("1 x")
    assert details["train_split"] == "train" and details["eval_split"] == "test"
    assert results["machine"]["jax_backend"] == "cpu" and results["software"]["jax"]
    # config.json is the config as run; metrics.jsonl one record per step plus the evaluation.
    assert json.load(open(os.path.join(workdir, "config.json")))["num_train_steps"] == 3
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [(r["step"], "eval_accuracy" in r) for r in map(json.loads, f)] == [(1, False), (2, False), (3, False),
                                                                                   (3, True)]
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_a_workdir_that_is_a_file_is_refused_before_any_work(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    with pytest.raises(workdir_lib.WorkdirError, match="is a file, not a directory"):
        jobs.train_and_evaluate(_tiny(), str(path))
    assert path.read_text() == "not a directory"


def test_unknown_job_kind_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown job kind 'trian'; known kinds: \[.*'train'"):
        jobs.run(_tiny(kind="trian"), str(tmp_path / "run"))
