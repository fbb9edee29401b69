"""Seeds runs (cnnlab.jobs.seeds): seed_<n>/ sub-workdirs, the aggregate record and report, skipping finished seeds,
the config syntax (--config.seeds=N), the schema's optional seeds section; a real train run over 2 seeds."""

import json
import os

import ml_collections
import numpy as np
import pytest

import cnnlab.jobs
from cnnlab.jobs import seeds as seeds_lib
from cnnlab.jobs import workdir as workdir_lib
from cnnlab.report import stats
from experiments.config_loading import ConfigError, load_config

MACHINE = {"cpu_model": "Test CPU", "cpu_flags": [], "usable_cores": 2, "memory_gib": 8.0, "jax_backend": "cpu",
           "jax_devices": "1 x cpu", "process_count": 1}
ACCURACY = {0: 0.90, 1: 0.92, 2: 0.95}  # by seed
LABELS = np.arange(20) % 10


class FakeJob:
    """A knn-kind job whose accuracy depends on the seed; writes config.json, results.json and predictions."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, workdir):
        self.calls.append((config.seed, os.path.basename(workdir)))
        wd = workdir_lib.Workdir(workdir)
        wd.write_config(config)
        wrong = int(round((1 - ACCURACY[config.seed]) * 20))
        predictions = LABELS.copy()
        predictions[:wrong] = (predictions[:wrong] + 1) % 10
        wd.write_predictions(predictions, LABELS)
        wd.write_results(workdir_lib.results_record(
            kind="knn", dataset="digits", train_count=100, test_count=20,
            test_accuracy=float(np.mean(predictions == LABELS)),
            train_s=1.0 + config.seed, inference_s_per_1000=0.5, model_name="knn", machine=MACHINE,
            chosen={"k": 1}, chosen_text="k=1"))


def knn_config(seeds=3):
    return ml_collections.ConfigDict({"kind": "knn", "dataset": "digits", "seed": 0, "seeds": seeds, "test_size": 0})


def test_seeds_run_writes_sub_workdirs_and_the_aggregate_and_skips_finished_seeds(tmp_path, monkeypatch, capsys):
    fake = FakeJob()
    monkeypatch.setitem(cnnlab.jobs.JOBS, "knn", fake)
    results = cnnlab.jobs.run(knn_config(), str(tmp_path))
    assert fake.calls == [(0, "seed_0"), (1, "seed_1"), (2, "seed_2")]
    for index in range(3):  # each seed is a whole single run with its own seed and seeds=1
        written = json.loads((tmp_path / f"seed_{index}" / "config.json").read_text())
        assert written["seed"] == index and written["seeds"] == 1 and written["test_subset_seed"] == 1

    section = results["seeds"]
    accuracies = [0.90, 0.90, 0.95]  # round((1 - 0.92) * 20) = 2 wrong of 20 -> 0.90
    assert section["values"] == [0, 1, 2] and section["workdirs"] == ["seed_0", "seed_1", "seed_2"]
    assert section["per_seed"]["test_accuracy"] == accuracies
    assert section["metrics"]["test_accuracy"] == stats.summarize(accuracies).to_dict()
    assert section["metrics"]["train_s"]["mean"] == pytest.approx(2.0)
    assert results["test"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert results["timing"]["train_s"] == pytest.approx(6.0)  # sequential seeds: the sum
    correct = np.stack([np.arange(20) >= 2, np.arange(20) >= 2, np.arange(20) >= 1])
    assert (section["accuracy_bootstrap"]["low"], section["accuracy_bootstrap"]["high"]) == \
        stats.bootstrap_accuracy_interval(correct, resamples=seeds_lib.BOOTSTRAP_RESAMPLES)
    assert section["params_sha256"] == [None, None, None]
    assert workdir_lib.Workdir(tmp_path).read_results() == results  # schema-checked on the way back
    report = (tmp_path / "report.md").read_text()
    assert "| test accuracy | 91.67 +/- 2.89% | 90.00 | 95.00 |" in report and "Bootstrap 95% interval" in report
    assert (tmp_path / "seeds_accuracy.png").stat().st_size > 0

    # A rerun skips the finished seeds and reruns only a seed whose results are missing.
    os.remove(tmp_path / "seed_1" / "results.json")
    again = cnnlab.jobs.run(knn_config(), str(tmp_path))
    assert fake.calls[3:] == [(1, "seed_1")]
    assert again["seeds"]["per_seed"] == section["per_seed"]
    assert "seed 0 (seed_0): already finished, skipped" in capsys.readouterr().out


def test_a_seed_workdir_of_another_config_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setitem(cnnlab.jobs.JOBS, "knn", FakeJob())
    cnnlab.jobs.run(knn_config(seeds=2), str(tmp_path))
    changed = knn_config(seeds=2)
    changed.test_size = 50
    with pytest.raises(ValueError, match="seed_0 holds results of a different config.*test_size"):
        cnnlab.jobs.run(changed, str(tmp_path))


def test_deterministic_methods_show_no_spread(tmp_path, monkeypatch):
    monkeypatch.setitem(ACCURACY, 1, 0.90)  # both seeds give the same predictions, as exact kNN does
    monkeypatch.setitem(cnnlab.jobs.JOBS, "knn", FakeJob())
    results = cnnlab.jobs.run(knn_config(seeds=2), str(tmp_path))
    summary = results["seeds"]["metrics"]["test_accuracy"]
    assert summary["deterministic"] and summary["std"] == 0.0
    assert "| test accuracy | 90.00% (no spread: all 2 seeds equal) |" in (tmp_path / "report.md").read_text()


def test_bad_seed_counts_and_kinds_are_refused(tmp_path):
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="config.seeds must be a positive integer"):
            cnnlab.jobs.run(knn_config(seeds=bad), str(tmp_path))
    config = knn_config(seeds=2)
    config.seeds_stacked = True
    with pytest.raises(ValueError, match="seeds_stacked applies to train jobs"):
        cnnlab.jobs.run(config, str(tmp_path))


def test_seeds_syntax_is_the_config_field_for_every_config():
    for spec in ("experiments/configs/knn.py:digits", "experiments/configs/classical.py:digits",
                 "experiments/configs/lenet5_digits.py", "experiments/configs/compare.py:digits"):
        assert load_config(spec).seeds == 1
        assert load_config(spec, ["--config.seeds=5"]).seeds == 5
        assert load_config(spec).deterministic is False
    with pytest.raises(ConfigError, match=r"write --config.seeds=5"):
        load_config("experiments/configs/knn.py:digits,seeds=5")


def test_schema_checks_the_seeds_section():
    record = workdir_lib.results_record(kind="knn", dataset="digits", train_count=1, test_count=1, test_accuracy=1.0,
                                        train_s=0.0, machine=MACHINE)
    assert "seeds" not in record  # single runs: no section, schema_version unchanged
    workdir_lib.check_results(record)
    good = {"n": 2, "values": [0, 1], "workdirs": ["seed_0", "seed_1"], "params_sha256": [None, None],
            "metrics": {"test_accuracy": stats.summarize([0.5, 0.7]).to_dict()}}
    assert workdir_lib.check_results({**record, "seeds": good})["seeds"] == good
    for broken, message in (({**good, "values": [0]}, "seeds.values"), ({**good, "metrics": {}}, "test_accuracy"),
                            ({**good, "workdirs": ["seed_0"]}, "seeds.workdirs")):
        with pytest.raises(ValueError, match=message):
            workdir_lib.check_results({**record, "seeds": broken})
