"""Resume after a SIGKILL ends with exactly the uninterrupted run's metrics; N -> M device restore; eval mode."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cnnlab.train import evaluate_checkpoint, train_and_evaluate
from experiments.configs import lenet5_digits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The overrides the subprocess gets on its command line, and the in-process reference run gets as fields.
# One device (the N-device cases are tested below) and one chunk length (11 steps per dispatch, 44 per epoch):
# few compilations, so the three runs stay quick.
OVERRIDES = {"num_epochs": 3, "batch_size": 32, "eval_batch_size": 120, "checkpoint_every_steps": 11,
             "steps_per_dispatch": 11, "log_every_steps": 11, "report": False, "augment": True, "num_devices": 1}
TIMING_KEYS = {"images_per_s", "elapsed_s"}


def _command(workdir):
    return [sys.executable, "-m", "experiments.main", "--config=experiments/configs/lenet5_digits.py",
            f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def _committed_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def test_sigkill_mid_run_then_rerun_gives_identical_final_metrics(tmp_path):
    config = lenet5_digits.get_config()
    for key, value in OVERRIDES.items():
        config[key] = value
    reference = train_and_evaluate(config, str(tmp_path / "reference"))

    workdir = str(tmp_path / "killed")
    env = dict(os.environ)
    process = subprocess.Popen(_command(workdir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not [s for s in _committed_steps(workdir) if s >= 20] and process.poll() is None:
        assert time.time() < deadline, "the training subprocess wrote no checkpoint in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not os.path.exists(os.path.join(workdir, "results.json")), "the run finished before it was killed"
    killed_at = max(_committed_steps(workdir))

    rerun = subprocess.run(_command(workdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resuming from checkpoint step" in rerun.stdout
    resumed_from = int(rerun.stdout.split("Resuming from checkpoint step")[1].split()[0])
    assert 20 <= resumed_from <= killed_at < 132

    resumed = json.load(open(os.path.join(workdir, "results.json")))
    for key in ("eval_loss", "eval_accuracy", "eval_top5_accuracy", "eval_confusion", "eval_per_class_accuracy"):
        assert resumed[key] == reference[key], key  # exact equality, not a tolerance
    # Every logged train loss and eval figure is the same too, and no step is logged twice.
    assert _records(workdir) == _records(str(tmp_path / "reference"))


def test_restore_on_other_device_count_and_eval_mode(tmp_path, make_config):
    workdir = str(tmp_path / "run")
    config = make_config(num_epochs=2, checkpoint_every_steps=30, num_devices=8, steps_per_dispatch=11,
                         log_every_steps=11)
    results = train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = {r["step"]: r for r in map(json.loads, f) if "eval_accuracy" in r}

    # Saved on 8 devices, evaluated on 1: the best checkpoint (by eval accuracy) gives its logged figures.
    summary = evaluate_checkpoint(make_config(num_epochs=2, num_devices=1), workdir)
    best = max(evals, key=lambda s: evals[s]["eval_accuracy"])
    assert summary["step"] == best
    assert summary["eval_accuracy"] == evals[best]["eval_accuracy"]
    assert summary["eval_loss"] == pytest.approx(evals[best]["eval_loss"], rel=1e-5)
    assert json.load(open(os.path.join(workdir, "eval_results.json")))["step"] == best

    # Continue the same run for a third epoch on 2 devices: it restores step 88 and trains 44 more steps.
    more = train_and_evaluate(make_config(num_epochs=3, checkpoint_every_steps=30, num_devices=2,
                                          steps_per_dispatch=11, log_every_steps=11), workdir)
    assert more["steps"] == 132 and more["device"].startswith("2 x")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [r["step"] for r in map(json.loads, f) if "eval_accuracy" in r]
    assert steps == [44, 88, 132]
    assert np.isfinite(more["eval_loss"]) and results["steps"] == 88


def test_eval_mode_without_checkpoints_is_a_clear_error(tmp_path, make_config):
    with pytest.raises(FileNotFoundError, match="No checkpoints"):
        evaluate_checkpoint(make_config(), str(tmp_path / "empty"))
