"""The workdir contract: the lock, the results schema, metrics.jsonl rewriting, unusable paths."""

import json
import os
import subprocess
import sys
import time

import pytest

from cnnlab.jobs import workdir as workdir_lib
from cnnlab.jobs.workdir import MetricsLog, Workdir, WorkdirBusy, WorkdirError


def _record(**overrides):
    fields = dict(kind="train", dataset="digits", train_count=1438, test_count=359, test_accuracy=0.97, train_s=3.5,
                  machine={"cpu_model": "test cpu"})
    fields.update(overrides)
    return workdir_lib.results_record(**fields)


def test_results_record_has_every_schema_field_and_round_trips(tmp_path):
    record = _record(validation_count=100, compile_s=1.5, inference_s_per_1000=0.2, num_params=61706,
                     model_bytes=246824, chosen={"k": 3}, chosen_text="k=3")
    assert record["schema_version"] == workdir_lib.SCHEMA_VERSION
    assert record["splits"] == {"train": 1438, "validation": 100, "test": 359}
    assert record["test"] == {"accuracy": 0.97, "count": 359, "top5_accuracy": None, "loss": None}
    assert record["timing"] == {"train_s": 3.5, "compile_s": 1.5, "inference_s_per_1000": 0.2, "wall_s": None}
    assert record["model"] == {"name": "", "num_params": 61706, "bytes": 246824, "params_sha256": None}
    assert set(record["software"]) >= {"python", "jax", "flax", "numpy"}
    wd = Workdir(tmp_path / "run")
    path = wd.write_results(record)
    assert json.loads(open(path).read()) == record
    assert wd.read_results() == record


@pytest.mark.parametrize("bad, message", [
    (dict(kind="svm"), "Unknown job kind"),
    (dict(test_accuracy=1.5), "fraction"),
    (dict(test_accuracy=float("nan")), "finite"),
    (dict(test_count=3.5), "integer"),
    (dict(train_s="3 s"), "number"),
])
def test_results_record_rejects_bad_values(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        _record(**bad)


def test_read_results_rejects_another_schema_version(tmp_path):
    wd = Workdir(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"test_accuracy": 0.9}))
    with pytest.raises(ValueError, match="schema_version"):
        wd.read_results()


def test_a_file_or_unwritable_path_is_refused_before_anything_runs(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(WorkdirError, match="is a file"):
        Workdir(target)
    with pytest.raises(WorkdirError, match="cannot be created"):
        Workdir(target / "below")
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "readonly"
        locked.mkdir(mode=0o500)
        with pytest.raises(WorkdirError, match="not writable"):
            Workdir(locked)


_HOLD = """
import sys, time
from cnnlab.jobs.workdir import Workdir
with Workdir(sys.argv[1]).locked(command="holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_job_on_a_locked_workdir_fails_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        began = time.perf_counter()
        with pytest.raises(WorkdirBusy, match=rf"pid {holder.pid} on host .*started .*holder"):
            with Workdir(tmp_path).locked():
                pass
        assert time.perf_counter() - began < 2
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: its lock does not block.
    with Workdir(tmp_path).locked():
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_the_lock_is_reentrant_and_non_chief_processes_write_nothing(tmp_path):
    wd = Workdir(tmp_path / "a")
    with wd.locked():
        with wd.locked():
            pass
    other = Workdir(tmp_path / "b", is_chief=False)
    with other.locked():
        other.write_config({"a": 1})
        other.metrics.append({"step": 1})
    assert not (tmp_path / "b").exists()


def test_metrics_rewrite_keeps_the_restored_history_once_and_in_order(tmp_path):
    log = MetricsLog(str(tmp_path / "metrics.jsonl"))
    for step in (10, 20, 30):
        log.append({"step": step, "train_loss": 1.0 / step})
    log.append({"step": 30, "eval_accuracy": 0.5})
    # A second writer (or a run killed and resumed) appended duplicates and later steps, and a torn line.
    for step in (20, 10, 40):
        log.append({"step": step, "train_loss": 2.0 / step})
    with open(log.path, "a") as f:
        f.write('{"step": 50, "train_lo')
    kept = log.rewrite_until(30)
    assert [(r["step"], "eval_accuracy" in r) for r in kept] == [(10, False), (20, False), (30, False), (30, True)]
    assert kept[0]["train_loss"] == 2.0 / 10  # the last record of a step wins
    assert log.read() == kept


def test_to_jsonable_handles_numpy_and_non_finite():
    import numpy as np

    assert workdir_lib.to_jsonable({"a": np.float32(0.5), "b": np.arange(2), "c": (1, 2), "d": float("inf")}) == \
        {"a": 0.5, "b": [0, 1], "c": [1, 2], "d": None}


def test_describe_machine_is_one_line():
    text = workdir_lib.describe_machine({"cpu_model": "AMD EPYC 7B13", "cpu_flags": ["avx2", "fma"],
                                         "usable_cores": 2, "memory_gib": 23.4, "jax_backend": "cpu",
                                         "jax_devices": "8 x cpu", "process_count": 1})
    assert text == "AMD EPYC 7B13 [avx2 fma] (2 cores, 23.4 GiB), jax cpu: 8 x cpu"


def test_tree_sha256_sees_one_bit_and_ignores_key_order():
    import numpy as np

    tree = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": {"k": np.ones(4, np.float32)}}
    same = {"a": {"k": np.ones(4, np.float32)}, "b": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert workdir_lib.tree_sha256(tree) == workdir_lib.tree_sha256(same)
    flipped = {"a": {"k": np.ones(4, np.float32)}, "b": tree["b"].copy()}
    flipped["b"].view(np.uint32)[0, 0] ^= 1  # one bit of one float
    assert workdir_lib.tree_sha256(flipped) != workdir_lib.tree_sha256(tree)
    assert workdir_lib.tree_sha256({"a": tree["b"].reshape(3, 2)}) != workdir_lib.tree_sha256({"a": tree["b"]})
