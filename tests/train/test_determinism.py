"""The determinism contract on CPU (docs/seeds.md): the same config and seed give bit-identical metrics.jsonl values
and final-parameter hashes on rerun; a run killed and resumed ends with the uninterrupted run's parameter hash;
the hash changes with the seed; config.deterministic puts XLA's deterministic-ops flag in place before the
backend starts."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _train_helpers import ROOT, committed_steps, records, tiny_config

from cnnlab.jobs import train_and_evaluate
from cnnlab.jobs import workdir as workdir_lib

# 30 steps of LeNet-5 on digits with augmentation (random crops and flips draw from the state's key every step),
# a log every 10 and a checkpoint every 10 steps.
FIELDS = dict(num_train_steps=30, augment=True, log_every_steps=10, checkpoint_every_steps=10, keep_checkpoints=5)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("determinism") / "first")
    return workdir, train_and_evaluate(tiny_config(**FIELDS), workdir)


def test_rerun_gives_bit_identical_metrics_and_parameter_hash(first_run, tmp_path):
    workdir, results = first_run
    again = train_and_evaluate(tiny_config(**FIELDS), str(tmp_path / "second"))
    assert again["model"]["params_sha256"] == results["model"]["params_sha256"]
    assert records(str(tmp_path / "second")) == records(workdir)  # every value, exactly (timing fields aside)
    assert again["details"]["eval_confusion"] == results["details"]["eval_confusion"]
    # The hash is the final parameters' and batch statistics': written into results.json.
    assert workdir_lib.Workdir(workdir).read_results()["model"]["params_sha256"] == results["model"]["params_sha256"]
    # The run's per-image test predictions (for McNemar and bootstrap intervals) match its accuracy.
    predictions, labels = workdir_lib.Workdir(workdir).read_predictions()
    assert len(labels) == results["test"]["count"] == 359
    assert np.mean(predictions == labels) == results["test"]["accuracy"]


def test_another_seed_gives_another_hash(first_run, tmp_path):
    other = train_and_evaluate(tiny_config(**FIELDS, seed=1), str(tmp_path / "seed1"))
    assert other["model"]["params_sha256"] != first_run[1]["model"]["params_sha256"]


def test_killed_and_resumed_run_ends_with_the_uninterrupted_parameter_hash(first_run, tmp_path):
    workdir, results = first_run
    killed = str(tmp_path / "killed")
    shutil.copytree(workdir, killed)
    # What a kill after step 10's checkpoint leaves: later checkpoints never committed, no results.json.
    for step in committed_steps(killed):
        if step > 10:
            shutil.rmtree(os.path.join(killed, "checkpoints", str(step)))
    os.remove(os.path.join(killed, "results.json"))
    resumed = train_and_evaluate(tiny_config(**FIELDS), killed)
    assert resumed["model"]["params_sha256"] == results["model"]["params_sha256"]
    assert records(killed) == records(workdir)


def test_deterministic_switch_sets_the_xla_flag_before_the_backend_starts(tmp_path):
    script = (
        "import os, json, ml_collections\n"
        "from cnnlab import jobs\n"
        "assert jobs.apply_deterministic(ml_collections.ConfigDict({'deterministic': False})) is False\n"
        "assert jobs.apply_deterministic(ml_collections.ConfigDict({'deterministic': True})) is True\n"
        "import jax, jax.numpy as jnp\n"
        "value = float(jnp.ones(3).sum())\n"  # the backend starts with the flag in place and accepts it
        "print(json.dumps({'flags': os.environ['XLA_FLAGS'], 'value': value}))\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"flags": "--xla_gpu_deterministic_ops=true", "value": 3.0}


def test_deterministic_switch_after_the_backend_started_is_a_clear_error(monkeypatch):
    import jax
    import ml_collections

    from cnnlab import jobs

    jax.devices()  # the backend runs (as in this test process) without the flag
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    with pytest.raises(ValueError, match="already started without --xla_gpu_deterministic_ops=true"):
        jobs.apply_deterministic(ml_collections.ConfigDict({"deterministic": True}), environ)
    environ["XLA_FLAGS"] += " --xla_gpu_deterministic_ops=true"  # set by the user before starting: fine
    assert jobs.apply_deterministic(ml_collections.ConfigDict({"deterministic": True}), environ)


@pytest.mark.slow
def test_sigkilled_subprocess_resumes_to_the_uninterrupted_parameter_hash(tmp_path, reference_run):
    """A real SIGKILL mid-run (as test_train_resume's), checked by the final parameter hash."""
    from _train_helpers import kill_after_checkpoint, main_command

    reference_dir, reference = reference_run
    workdir = str(tmp_path / "killed")
    kill_after_checkpoint(workdir)
    rerun = subprocess.run(main_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming from checkpoint step" in rerun.stdout
    resumed = workdir_lib.Workdir(workdir).read_results()
    assert resumed["model"]["params_sha256"] == reference["model"]["params_sha256"]
