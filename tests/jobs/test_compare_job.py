"""The compare job: job skipping, config matching, rows read from the results schema, outputs; digits end to end."""

import json
import os

import matplotlib.image
import ml_collections
import numpy as np
import pytest

import cnnlab.jobs
from cnnlab.jobs import compare
from cnnlab.jobs import workdir as workdir_lib

MACHINE = {"cpu_model": "Test CPU", "cpu_flags": ["avx2"], "usable_cores": 2, "memory_gib": 8.0,
           "jax_backend": "cpu", "jax_devices": "1 x cpu", "process_count": 1}


def fake_config():
    """A compare config over three fake jobs whose functions the tests put into cnnlab.jobs.JOBS."""
    config = ml_collections.ConfigDict()
    config.kind = "compare"
    config.dataset = "digits"
    config.methods = ("classical", "knn", "lenet5")
    config.command = "python -m experiments.main --config=experiments/configs/compare.py:digits --workdir=DIR"
    config.split_description = "train / test"
    config.jobs = ml_collections.ConfigDict()
    config.jobs.classical = ml_collections.ConfigDict({"kind": "classical", "dataset": "digits", "train_size": 0})
    config.jobs.knn = ml_collections.ConfigDict({"kind": "knn", "dataset": "digits", "k_values": (1, 3, 5)})
    config.jobs.lenet5 = ml_collections.ConfigDict({"kind": "train", "dataset": "digits", "model": "lenet5",
                                                    "num_epochs": 2, "optimizer": {"name": "sgd", "lr": 0.1}})
    return config


RECORDS = {
    "knn": dict(kind="knn", test_accuracy=0.9805, train_s=0.012, inference_s_per_1000=0.034, model_bytes=92032,
                chosen={"k": 3, "metric": "l2"}, chosen_text="k=3, L2"),
    "lenet5": dict(kind="train", test_accuracy=0.9721, train_s=12.5, compile_s=3.0, inference_s_per_1000=0.21,
                   num_params=61706, details={"epochs": 2.0}),
    "classical": dict(kind="classical", test_accuracy=0.9861, train_s=0.05, inference_s_per_1000=0.5,
                      validation_count=144, chosen={"method": "svm/pixels"}, chosen_text="svm on pixels"),
}


class FakeJobs:
    """Stands in for the job functions: writes config.json and a schema results.json, counts calls."""

    def __init__(self, records):
        self.records = records
        self.calls = []

    def install(self, monkeypatch):
        for kind in ("train", "knn", "classical"):
            monkeypatch.setitem(cnnlab.jobs.JOBS, kind, self.job)

    def job(self, config, workdir):
        name = os.path.basename(workdir)
        self.calls.append(name)
        wd = workdir_lib.Workdir(workdir)
        wd.write_config({**config.to_dict(), "added_by_job": 1})
        fields = dict(dataset="digits", train_count=1438, test_count=359, wall_s=1.5, machine=MACHINE)
        wd.write_results(workdir_lib.results_record(**{**fields, **self.records[name]}))


def test_rows_come_from_the_schema_and_done_jobs_are_skipped(tmp_path, monkeypatch, capsys):
    fake = FakeJobs(RECORDS)
    fake.install(monkeypatch)
    results = compare.run(fake_config(), str(tmp_path))
    assert fake.calls == ["classical", "knn", "lenet5"]
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    rows = {r["method"]: r for r in comparison["methods"]}
    assert rows["knn"] == {
        "method": "knn", "kind": "knn", "test_accuracy": 0.9805, "test_count": 359, "train_count": 1438,
        "epochs": None, "train_time_s": 0.012, "inference_s_per_1000": 0.034, "num_params": None,
        "model_bytes": 92032, "ran_on": "Test CPU [avx2] (2 cores, 8.0 GiB), jax cpu: 1 x cpu",
        "chosen": "k=3, L2", "job_wall_s": 1.5, "source": "knn/results.json", "ran_now": True}
    assert rows["lenet5"]["epochs"] == 2.0 and rows["lenet5"]["num_params"] == 61706
    # The comparison's own results.json: the best method's figures, in the same schema.
    assert results == workdir_lib.Workdir(tmp_path).read_results()
    assert results["kind"] == "compare" and results["chosen"] == {"method": "classical"}
    assert results["test"]["accuracy"] == 0.9861
    assert results["timing"]["train_s"] == pytest.approx(0.012 + 12.5 + 0.05)
    table = (tmp_path / "comparison.md").read_text()
    assert "| knn | 98.05% | 359 | 1,438 | 12 ms | 34 ms | 89.9 KiB | k=3, L2 |" in table
    assert "| lenet5 | 97.21% | 359 | 1,438 x 2 epochs | 12.5 s | 210 ms | 61,706 params |  |" in table
    assert "Every job ran on: Test CPU [avx2]" in table  # one machine: said once, not per row
    assert table.index("| classical |") < table.index("| knn |") < table.index("| lenet5 |")  # best first
    image = matplotlib.image.imread(tmp_path / "comparison.png")
    assert image.shape[0] >= 400 and image.shape[1] >= 600
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "Comparison on digits: classical 98.61%, knn 98.05%, lenet5 97.21%"
    assert lines[-1] == f"Results: {tmp_path}/results.json  Report: {tmp_path}/comparison.md"

    # Second invocation: every job is done for this very config, so nothing runs and the numbers are equal.
    again = compare.run(fake_config(), str(tmp_path))
    assert fake.calls == ["classical", "knn", "lenet5"]
    assert [r["ran_now"] for r in again["details"]["methods"]] == [False, False, False]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "ran_now"} for r in rows]  # noqa: E731
    assert strip(again["details"]["methods"]) == strip(comparison["methods"])


def test_changed_job_config_is_an_error_not_a_silent_reuse(tmp_path, monkeypatch):
    FakeJobs(RECORDS).install(monkeypatch)
    compare.run(fake_config(), str(tmp_path))
    changed = fake_config()
    changed.jobs.lenet5.num_epochs = 5
    with pytest.raises(ValueError, match=r"lenet5 holds results of a different config \(num_epochs: 5 here, 2"):
        compare.run(changed, str(tmp_path))


def test_job_without_results_runs_again(tmp_path, monkeypatch):
    fake = FakeJobs(RECORDS)
    fake.install(monkeypatch)
    compare.run(fake_config(), str(tmp_path))
    os.remove(tmp_path / "lenet5" / "results.json")  # e.g. killed before the end: it must resume, not be skipped
    compare.run(fake_config(), str(tmp_path))
    assert fake.calls == ["classical", "knn", "lenet5", "lenet5"]


def test_bad_results_and_configs(tmp_path, monkeypatch):
    def old_schema_job(config, workdir):
        wd = workdir_lib.Workdir(workdir)
        wd.write_config(config)
        workdir_lib.write_json(wd.file("results.json"), {"test_accuracy": 0.9, "train_time_s": 1.0})

    for kind in ("train", "knn", "classical"):
        monkeypatch.setitem(cnnlab.jobs.JOBS, kind, old_schema_job)
    with pytest.raises(ValueError, match="schema_version None, this cnnlab reads 1"):
        compare.run(fake_config(), str(tmp_path / "a"))
    for kind in ("train", "knn", "classical"):
        monkeypatch.setitem(cnnlab.jobs.JOBS, kind, lambda config, workdir: None)
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
    with pytest.raises(ValueError, match="Unknown job kind 'svm'"):
        cnnlab.jobs.run(ml_collections.ConfigDict({"kind": "svm"}), str(tmp_path / "g"))


def test_config_differences_ignores_added_keys_and_tuple_list():
    expected = {"a": (1, 2), "b": {"c": 0.5}}
    assert compare.config_differences(expected, {"a": [1, 2], "b": {"c": 0.5}, "extra": 3}) == []
    assert compare.config_differences(expected, {"a": [1, 2]}) == ["b.c: 0.5 (not in the written config)"]


@pytest.mark.slow
def test_digits_runlocal_end_to_end(tmp_path):
    """The real four jobs on digits (about a minute on 2 cores): every row equals its job's results.json."""
    from experiments.configs import compare as compare_config

    config = compare_config.get_config("digits,runlocal")
    for method in ("lenet5", "resnet20"):
        config.jobs[method].num_devices = 1
    results = compare.run(config, str(tmp_path))
    rows = {r["method"]: r for r in results["details"]["methods"]}
    assert list(rows) == ["classical", "knn", "lenet5", "resnet20"]
    for method, row in rows.items():
        job = workdir_lib.Workdir(tmp_path / method).read_results()
        assert row["test_accuracy"] == job["test"]["accuracy"] and row["test_count"] == job["test"]["count"] == 359
        assert row["train_time_s"] == job["timing"]["train_s"] > 0
        assert 0.5 < row["test_accuracy"] <= 1.0
    assert results["test"]["accuracy"] == max(r["test_accuracy"] for r in rows.values())



def digits_seeds_config(methods, seeds=3):
    """A real comparison on digits over ``seeds`` seeds, shrunk to seconds: kNN (k in 1, 3; 2 folds), the
    classical SVM on pixels, LeNet-5 for 12 steps with its seeds stacked in one program."""
    from experiments.configs import compare as compare_config

    config = compare_config.get_config("digits,runlocal")
    config.seeds = seeds
    config.methods = methods
    config.jobs.knn.ks = (1, 3)
    config.jobs.knn.folds = 2
    classical_job = config.jobs.classical
    classical_job.train_size, classical_job.feature_sets, classical_job.classifiers = 600, ("pixels",), ("svm",)
    lenet = config.jobs.lenet5
    lenet.num_train_steps, lenet.log_every_steps, lenet.checkpoint_every_steps = 12, 6, 0
    lenet.report, lenet.num_devices, lenet.seeds_stacked = False, 1, True
    return config


def _check_seeds_comparison(tmp_path, methods):
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    rows = {r["method"]: r for r in comparison["methods"]}
    assert list(rows) == list(methods)
    for method, row in rows.items():
        aggregate = workdir_lib.Workdir(tmp_path / method).read_results()
        assert row["seeds"] == [0, 1, 2] and len(row["accuracies"]) == 3
        assert row["accuracies"] == aggregate["seeds"]["per_seed"]["test_accuracy"]
        for index in range(3):
            seed_results = workdir_lib.Workdir(tmp_path / method / f"seed_{index}").read_results()
            assert seed_results["test"]["accuracy"] == row["accuracies"][index]
            assert (tmp_path / method / f"seed_{index}" / "predictions.npy").is_file()
    # Exact kNN on the full digits split: the CV folds change with the seed, the chosen k and so the accuracy
    # do not; the table says so instead of drawing an interval.
    assert rows["knn"]["deterministic"] and rows["knn"]["accuracy_std"] == 0.0
    assert not rows["lenet5"]["deterministic"] and rows["lenet5"]["stacked"]
    # A paired t test for each pair over the 3 seeds, McNemar on seed 0's predictions for each pair.
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]
    assert [(t["a"], t["b"]) for t in comparison["paired_tests"]] == pairs
    assert [(t["a"], t["b"]) for t in comparison["mcnemar"]] == pairs
    knn_vs_lenet = comparison["paired_tests"][pairs.index(("knn", "lenet5"))]
    assert knn_vs_lenet["mean_difference"] == pytest.approx(np.mean(rows["knn"]["accuracies"])
                                                            - np.mean(rows["lenet5"]["accuracies"]))
    assert knn_vs_lenet["p_value"] < 0.05  # 12 LeNet-5 steps are far from kNN's 98%: a real difference
    mc = comparison["mcnemar"][pairs.index(("knn", "lenet5"))]
    knn_pred, labels = workdir_lib.Workdir(tmp_path / "knn" / "seed_0").read_predictions()
    lenet_pred, _ = workdir_lib.Workdir(tmp_path / "lenet5" / "seed_0").read_predictions()
    assert (mc["only_a"], mc["only_b"]) == (int(np.sum((knn_pred == labels) & (lenet_pred != labels))),
                                            int(np.sum((knn_pred != labels) & (lenet_pred == labels))))
    table = (tmp_path / "comparison.md").read_text()
    assert "(no spread: deterministic, n=3)" in table and "McNemar's exact test" in table
    assert "No spread over seeds (the method is deterministic on this split): knn." in table
    assert (tmp_path / "comparison_seeds.png").stat().st_size > 0


@pytest.mark.slow  # ~1 min; the seeds aggregation and statistics have fast tests in tests/jobs/test_seeds.py
def test_digits_comparison_over_three_seeds_end_to_end(tmp_path):
    """kNN and LeNet-5 (stacked seeds) over 3 seeds: about 25 s on 2 idle cores."""
    methods = ("knn", "lenet5")
    results = compare.run(digits_seeds_config(methods), str(tmp_path))
    assert results["kind"] == "compare"
    _check_seeds_comparison(tmp_path, methods)


@pytest.mark.slow
def test_digits_comparison_of_three_methods_over_three_seeds(tmp_path):
    """With the classical pipeline too (its descriptor compilation alone takes ~40 s on 2 cores)."""
    methods = ("knn", "classical", "lenet5")
    compare.run(digits_seeds_config(methods), str(tmp_path))
    _check_seeds_comparison(tmp_path, methods)
