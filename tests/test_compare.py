"""The comparison: job skipping, config matching, provenance of every number, outputs; end to end on digits."""

import json
import os

import matplotlib.image
import ml_collections
import pytest

from cnnlab import compare


def fake_config(accuracies=None):
    """A compare config over two fake jobs (kinds "knn" and "train") whose functions the tests replace."""
    config = ml_collections.ConfigDict()
    config.kind = "compare"
    config.dataset = "digits"
    config.methods = ("classical", "knn", "lenet5")
    config.command = "python -m experiments.main --config=experiments/configs/compare.py:digits --workdir=DIR"
    config.split_description = "train[:80%] / train[80%:] / test"
    config.jobs = ml_collections.ConfigDict()
    config.jobs.classical = ml_collections.ConfigDict({"kind": "classical", "dataset": "digits", "train_size": 0})
    config.jobs.knn = ml_collections.ConfigDict({"kind": "knn", "dataset": "digits", "k_values": (1, 3, 5)})
    config.jobs.lenet5 = ml_collections.ConfigDict({"kind": "train", "dataset": "digits", "model": "lenet5",
                                                    "num_epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1}})
    return config


class FakeJobs:
    """Stands in for the job functions: writes config.json and results.json like a real job, counts calls."""

    def __init__(self, results):
        self.results = results
        self.calls = []

    def __call__(self, kind):
        def job(config, workdir):
            name = os.path.basename(workdir)
            self.calls.append(name)
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump({**config.to_dict(), "added_by_job": 1}, f)
            with open(os.path.join(workdir, "results.json"), "w") as f:
                json.dump(self.results[name], f)
        return job


RESULTS = {
    "knn": {"test_accuracy": 0.9805, "train_time_s": 0.012, "inference_s_per_1000": 0.034, "model_bytes": 92032,
            "device": "cpu (2 cores)", "chosen": {"k": 3, "metric": "l2"}, "test_count": 359},
    "lenet5": {"eval_accuracy": 0.9721, "eval_loss": 0.1, "train_time_s": 12.5, "inference_s_per_1000": 0.21,
               "num_params": 61706, "device": "cpu", "eval_count": 359},
    "classical": {"best": {"method": "svm/pixels", "test_accuracy": 0.9861, "train_time_s": 0.05,
                           "inference_s_per_1000": 0.5}, "test_size": 359, "device": "cpu",
                  "classifiers": [{"method": "svm/pixels", "test_accuracy": 0.9861}]},
}


def test_run_builds_comparison_from_results_and_skips_done_jobs(tmp_path, monkeypatch):
    fake = FakeJobs(RESULTS)
    monkeypatch.setattr(compare, "job_function", fake)
    comparison = compare.run(fake_config(), str(tmp_path))
    assert fake.calls == ["classical", "knn", "lenet5"]
    rows = {r["method"]: r for r in comparison["methods"]}
    assert rows["knn"]["test_accuracy"] == 0.9805 and rows["knn"]["model_bytes"] == 92032
    assert rows["knn"]["num_params"] is None
    assert rows["lenet5"]["test_accuracy"] == 0.9721 and rows["lenet5"]["num_params"] == 61706
    assert rows["lenet5"]["sources"]["test_accuracy"] == "lenet5/results.json:eval_accuracy"
    assert rows["knn"]["sources"]["inference_s_per_1000"] == "knn/results.json:inference_s_per_1000"
    assert rows["classical"]["test_accuracy"] == 0.9861 and rows["classical"]["chosen"] == "svm/pixels"
    assert rows["classical"]["sources"] == {
        "test_accuracy": "classical/results.json:best.test_accuracy", "train_time_s": "classical/results.json:best.train_time_s",
        "inference_s_per_1000": "classical/results.json:best.inference_s_per_1000",
        "test_count": "classical/results.json:test_size", "device": "classical/results.json:device",
        "chosen": "classical/results.json:best.method", "job_wall_s": "classical/compare_job.json:wall_s"}
    job_time = json.loads((tmp_path / "classical" / "compare_job.json").read_text())
    assert rows["classical"]["job_wall_s"] == job_time["wall_s"] > 0
    assert all(r["ran_now"] for r in rows.values())
    on_disk = json.loads((tmp_path / "comparison.json").read_text())
    assert on_disk["methods"] == comparison["methods"]
    assert on_disk["machine"]["usable_cores"] >= 1 and on_disk["machine"]["jax_backend"] == "cpu"
    table = (tmp_path / "comparison.md").read_text()
    assert "| knn | 98.05% | 359 | not reported | 12 ms | 34 ms | 89.9 KiB | {\"k\": 3, \"metric\": \"l2\"} | cpu (2 cores) |" in table
    assert "| lenet5 | 97.21% | 359 | 1,438 | 12.5 s | 210 ms | 61,706 params |  | cpu |" in table
    assert "| classical | 98.61% | 359 | not reported | 50 ms | 500 ms | not reported | svm/pixels | cpu |" in table
    assert table.index("| classical |") < table.index("| knn |") < table.index("| lenet5 |")  # best first
    image = matplotlib.image.imread(tmp_path / "comparison.png")
    assert image.shape[0] >= 400 and image.shape[1] >= 600

    # Second invocation: both jobs are done for this very config, so nothing runs and the numbers are equal.
    again = compare.run(fake_config(), str(tmp_path))
    assert fake.calls == ["classical", "knn", "lenet5"]
    assert [r["ran_now"] for r in again["methods"]] == [False, False, False]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "ran_now"} for r in rows]  # noqa: E731
    assert strip(again["methods"]) == strip(comparison["methods"])


def test_changed_job_config_is_an_error_not_a_silent_reuse(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "job_function", FakeJobs(RESULTS))
    compare.run(fake_config(), str(tmp_path))
    changed = fake_config()
    changed.jobs.lenet5.num_epochs = 5
    with pytest.raises(ValueError, match=r"lenet5 holds results of a different config \(num_epochs: 5 here, 2"):
        compare.run(changed, str(tmp_path))


def test_job_without_results_runs_again(tmp_path, monkeypatch):
    fake = FakeJobs(RESULTS)
    monkeypatch.setattr(compare, "job_function", fake)
    compare.run(fake_config(), str(tmp_path))
    os.remove(tmp_path / "lenet5" / "results.json")  # e.g. killed before the end: it must resume, not be skipped
    compare.run(fake_config(), str(tmp_path))
    assert fake.calls == ["classical", "knn", "lenet5", "lenet5"]


def test_bad_results_and_configs(tmp_path, monkeypatch):
    missing_accuracy = {**RESULTS, "knn": {"train_time_s": 1.0}}
    monkeypatch.setattr(compare, "job_function", FakeJobs(missing_accuracy))
    with pytest.raises(KeyError, match=r"knn/results.json of 'knn' has none of the keys \['test_accuracy'"):
        compare.run(fake_config(), str(tmp_path / "a"))
    nan_accuracy = {**RESULTS, "knn": {**RESULTS["knn"], "test_accuracy": float("nan")}}
    monkeypatch.setattr(compare, "job_function", FakeJobs(nan_accuracy))
    with pytest.raises(ValueError, match="test_accuracy must be a finite number"):
        compare.run(fake_config(), str(tmp_path / "b"))

    def silent_job(kind):
        return lambda config, workdir: None
    monkeypatch.setattr(compare, "job_function", silent_job)
    with pytest.raises(RuntimeError, match="without writing"):
        compare.run(fake_config(), str(tmp_path / "c"))

    config = fake_config()
    config.methods = ("knn", "svm")
    with pytest.raises(ValueError, match=r"names \['svm'\], which config.jobs lacks"):
        compare.run(config, str(tmp_path / "d"))
    config = fake_config()
    config.jobs.knn.dataset = "mnist"
    with pytest.raises(ValueError, match="every method must see the same data"):
        compare.run(config, str(tmp_path / "e"))
    config = fake_config()
    config.jobs.knn.kind = "compare"
    with pytest.raises(ValueError, match="has kind 'compare'"):
        compare.run(config, str(tmp_path / "f"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="Unknown job kind"):
        compare.job_function("svm")


def test_config_differences_ignores_added_keys_and_tuple_list():
    expected = {"a": (1, 2), "b": {"c": 0.5}}
    assert compare.config_differences(expected, {"a": [1, 2], "b": {"c": 0.5}, "extra": 3}) == []
    assert compare.config_differences(expected, {"a": [1, 2]}) == ["b.c: 0.5 (not in the written config)"]


# ------------------------------------------------------------------------------------------- end to end


def _source_value(root, source):
    """Re-reads the value a ``sources`` entry names: "job/results.json:a.b" or one of the documented formulas."""
    path, _, expression = source.partition(":")
    results = json.loads((root / path).read_text())
    if expression == "fit_time_s + cv_time_s":
        return results["fit_time_s"] + results["cv_time_s"]
    if expression == "best.train_time_s + descriptor_s_per_1000_images * train_size / 1000":
        return results["best"]["train_time_s"] + results["descriptor_s_per_1000_images"] * results["train_size"] / 1000
    if expression == "k, metric":
        return f"k={results['k']}, {results['metric']}"
    if expression.startswith("train_size x 8x8x1 bytes"):
        return results["train_size"] * 64
    value = results
    for part in expression.split("."):
        value = value[part]
    return value


def test_digits_runlocal_end_to_end_every_number_traces_to_the_jobs(tmp_path):
    import jax
    import numpy as np

    from cnnlab import data, models
    from experiments.configs import compare as compare_config

    def small_config():
        config = compare_config.get_config("digits,runlocal")
        for method in ("lenet5", "resnet20"):
            config.jobs[method].num_devices = 1  # tests simulate 8 CPU devices on 2 cores: 1 is faster here
        return config

    config = small_config()
    assert list(config.methods) == ["classical", "knn", "lenet5", "resnet20"]
    comparison = compare.run(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "comparison.json").read_text())
    assert on_disk["methods"] == comparison["methods"]
    test = data.load("digits", "test")
    train = data.load("digits", "train")
    rows = {r["method"]: r for r in on_disk["methods"]}
    assert list(rows) == ["classical", "knn", "lenet5", "resnet20"]

    for method, row in rows.items():
        job_dir = tmp_path / method
        assert (job_dir / "results.json").is_file() and (job_dir / "config.json").is_file()
        assert row["ran_now"] is True
        # Every number and text in the row names its source, and re-reading the source gives the same value.
        fields = [f for f, v in row.items() if f not in ("method", "kind", "sources", "ran_now") and v is not None]
        assert sorted(fields) == sorted(row["sources"]), method
        for field in fields:
            source = row["sources"][field]
            if source.startswith("cnnlab.data.info"):
                assert row[field] == len(train.labels)
            else:
                assert row[field] == _source_value(tmp_path, source), (method, field, source)
        # The same test set for everyone: all 359 test images of the digits split.
        assert row["test_count"] == len(test.labels) == 359
        assert 0.0 < row["test_accuracy"] <= 1.0 and row["train_time_s"] > 0 and row["inference_s_per_1000"] > 0

    # CNNs: the accuracy is the last evaluation in metrics.jsonl (after the final step) and agrees with the
    # confusion matrix; the parameter count matches the model built independently here.
    for method in ("lenet5", "resnet20"):
        results = json.loads((tmp_path / method / "results.json").read_text())
        records = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
        last_eval = [r for r in records if "eval_accuracy" in r][-1]
        assert last_eval["step"] == results["steps"] == config.jobs[method].num_train_steps
        assert rows[method]["test_accuracy"] == last_eval["eval_accuracy"]
        matrix = np.asarray(results["eval_confusion"])
        assert matrix.sum() == 359 and np.isclose(np.trace(matrix) / 359, rows[method]["test_accuracy"])
        model = models.get(config.jobs[method].model, num_classes=10)
        shape = (1, 28, 28, 1) if method == "lenet5" else (1, 8, 8, 1)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(shape, np.float32)))
        assert rows[method]["num_params"] == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    # kNN: the chosen (k, metric) is the best cross-validated pair; classical: the best of its pipelines.
    knn_results = json.loads((tmp_path / "knn" / "results.json").read_text())
    assert rows["knn"]["test_count"] == knn_results["test_size"] == 359
    assert rows["knn"]["train_count"] == len(train.labels)
    classical_results = json.loads((tmp_path / "classical" / "results.json").read_text())
    assert rows["classical"]["test_accuracy"] == max(r["test_accuracy"] for r in classical_results["classifiers"])

    # Machine description of this process.
    machine = on_disk["machine"]
    assert machine["logical_cores"] == os.cpu_count() and machine["jax_backend"] == jax.default_backend()
    assert on_disk["wall_s"] > 0

    table = (tmp_path / "comparison.md").read_text()
    for row in rows.values():
        assert f"| {row['method']} | {100 * row['test_accuracy']:.2f}% | 359 |" in table
    image = matplotlib.image.imread(tmp_path / "comparison.png")
    assert image.shape[:2] == (550, 800)

    # Rerunning the same command reuses every job and reproduces the table's numbers exactly.
    again = compare.run(small_config(), str(tmp_path))
    assert [r["ran_now"] for r in again["methods"]] == [False] * 4
    assert [{k: v for k, v in r.items() if k != "ran_now"} for r in again["methods"]] == \
        [{k: v for k, v in r.items() if k != "ran_now"} for r in on_disk["methods"]]
