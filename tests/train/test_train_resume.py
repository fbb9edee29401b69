"""Resuming (issue #12): after SIGKILL the rerun ends with exactly the uninterrupted run's metrics; N -> M device
restore; a changed config is refused (ResumeMismatch) unless only SAFE_ON_RESUME fields changed; a finished workdir
is left alone; metrics.jsonl is rewritten to the restored history; training and compile time are kept apart."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
from _train_helpers import (REFERENCE_STEPS, ROOT, committed_steps, kill_after_checkpoint, main_command,
                            orbax_tmp_dirs, records, reference_config)

from cnnlab.jobs import evaluate_checkpoint, train_and_evaluate
from cnnlab.train import ResumeMismatch, TrainingInterrupted
from cnnlab.train import checkpoint as checkpoint_lib

FINAL_KEYS = (("test", "accuracy"), ("test", "loss"), ("test", "top5_accuracy"), ("details", "eval_confusion"),
              ("details", "eval_per_class_accuracy"), ("details", "steps"))


def _same_final_metrics(results, reference):
    for section, key in FINAL_KEYS:
        assert results[section][key] == reference[section][key], key  # exact equality, not a tolerance


def _rewind(workdir, keep_until):
    """Makes a finished workdir look like a run killed after step ``keep_until``'s checkpoint was committed."""
    for step in committed_steps(workdir):
        if step > keep_until:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    os.remove(os.path.join(workdir, "results.json"))
    assert committed_steps(workdir)[-1] == keep_until


def _meta(workdir, step):
    ckpt = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"))
    try:
        return ckpt.read_meta(step)
    finally:
        ckpt.close()


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_identical_final_metrics(tmp_path, reference_run):
    reference_dir, reference = reference_run
    workdir = str(tmp_path / "killed")
    kill_after_checkpoint(workdir)
    killed_at = max(committed_steps(workdir))

    rerun = subprocess.run(main_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed_from = int(rerun.stdout.split("Resuming from checkpoint step")[1].split()[0])
    assert 20 <= resumed_from <= killed_at < REFERENCE_STEPS
    _same_final_metrics(json.load(open(os.path.join(workdir, "results.json"))), reference)
    # Every logged train loss and eval figure is the same too, and no step is logged twice.
    assert records(workdir) == records(reference_dir)


def test_restore_on_other_device_count_with_safe_changes_and_eval_mode(reference_copy, reference_run, capsys):
    workdir = reference_copy
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = {r["step"]: r for r in map(json.loads, f) if "eval_accuracy" in r}

    # Saved on 1 device, evaluated on 2: the best checkpoint (by eval accuracy) gives its logged figures.
    summary = evaluate_checkpoint(reference_config(num_devices=2), workdir)
    best = max((s for s in evals if s in committed_steps(workdir)), key=lambda s: evals[s]["eval_accuracy"])
    assert summary["step"] == best
    assert summary["eval_accuracy"] == evals[best]["eval_accuracy"]
    assert summary["eval_loss"] == pytest.approx(evals[best]["eval_loss"], rel=1e-5)
    assert json.load(open(os.path.join(workdir, "eval_results.json")))["step"] == best

    # Killed after step 121: resumed on 2 devices, with the SAFE_ON_RESUME fields changed (log, eval batch, keep).
    _rewind(workdir, 121)
    capsys.readouterr()
    config = reference_config(num_devices=2, log_every_steps=5, eval_batch_size=180, keep_checkpoints=3)
    results = train_and_evaluate(config, workdir)
    assert "Resuming from checkpoint step 121 of 132" in capsys.readouterr().out
    assert results["details"]["steps"] == REFERENCE_STEPS and results["details"]["devices"].startswith("2 x")
    reference = reference_run[1]
    assert results["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=1e-4)
    assert abs(results["test"]["accuracy"] - reference["test"]["accuracy"]) <= 2 / 359
    logged = records(workdir)
    assert [r["step"] for r in logged if "eval_accuracy" in r] == [44, 88, 132]
    assert [r["step"] for r in logged if "train_loss" in r and r["step"] > 121] == [125, 130, 132]  # every 5 now
    assert json.load(open(os.path.join(workdir, "config.json")))["num_devices"] == 2


@pytest.mark.parametrize("field, new, old", [("batch_size", 16, 32), ("seed", 1, 0), ("num_epochs", 4, 3),
                                             ("learning_rate", 0.1, 0.05)])
def test_resume_with_a_changed_config_is_refused(reference_copy, field, new, old):
    """Issue #12: the old loop resumed a checkpoint under any config whose shapes fit, mixing two runs."""
    workdir = reference_copy
    _rewind(workdir, 121)
    with open(os.path.join(workdir, "config.json"), "rb") as f:
        config_bytes = f.read()
    before = {name: os.path.getmtime(os.path.join(workdir, name)) for name in ("metrics.jsonl", "config.json")}
    with pytest.raises(ResumeMismatch) as info:
        train_and_evaluate(reference_config(**{field: new}), workdir)
    message = str(info.value)
    assert f"{field}: {old!r} in the checkpoint, {new!r} now" in message
    assert "Rerun with the checkpoint's values" in message and "use a new --workdir" in message
    with open(os.path.join(workdir, "config.json"), "rb") as f:
        assert f.read() == config_bytes  # byte-identical: the refused config was not written
    assert {name: os.path.getmtime(os.path.join(workdir, name)) for name in before} == before
    assert committed_steps(workdir)[-1] == 121


def test_rerun_of_a_finished_workdir_rewrites_nothing(reference_copy, capsys):
    workdir = reference_copy
    files = ("results.json", "metrics.jsonl", "config.json")
    before = {name: open(os.path.join(workdir, name), "rb").read() for name in files}
    capsys.readouterr()
    results = train_and_evaluate(reference_config(), workdir)
    assert f"Already finished at step {REFERENCE_STEPS}: test accuracy" in capsys.readouterr().out
    assert {name: open(os.path.join(workdir, name), "rb").read() for name in files} == before  # timing included
    assert results == json.loads(before["results.json"])


def test_resume_rewrites_a_crashed_runs_metrics_to_the_restored_history(reference_copy, reference_run):
    """Duplicated, out-of-order and future records (a crash between log and checkpoint) are dropped on resume."""
    workdir = reference_copy
    _rewind(workdir, 99)
    original = records(workdir, drop_timing=False)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        # Copies of kept records, out of order, and records of steps after the checkpoint with other values.
        for record in (original[3], original[0], original[5], {**original[-1], "step": 110, "train_loss": 7.0},
                       {"step": 120, "eval_accuracy": 0.5}):
            f.write(json.dumps(record) + "\n")
        f.write('{"step": 121, "train_lo')  # a torn last line
    results = train_and_evaluate(reference_config(), workdir)
    _same_final_metrics(results, reference_run[1])
    logged = records(workdir)
    assert logged == records(reference_run[0])
    keys = [(r["step"], "eval_accuracy" in r) for r in logged]
    assert len(keys) == len(set(keys)) and [s for s, _ in keys] == sorted(s for s, _ in keys)


def test_train_and_compile_time_are_kept_apart_across_a_restart(reference_copy, reference_run,
                                                              no_compilation_cache):
    reference = reference_run[1]["timing"]
    assert reference["compile_s"] > 0 and reference["train_s"] > 0
    assert reference["train_s"] + reference["compile_s"] <= reference["wall_s"]
    workdir = reference_copy
    _rewind(workdir, 66)
    saved = _meta(workdir, 66)
    assert 0 < saved["train_time_s"] <= reference["train_s"] and saved["compile_time_s"] > 0
    timing = train_and_evaluate(reference_config(), workdir)["timing"]
    # The restart compiled again: that time adds to compile_s, not to train_s.
    restart_compile = timing["compile_s"] - saved["compile_time_s"]
    assert restart_compile > 0
    # The 66 resumed steps ran in less time than their compilation took: the old loop counted it as training.
    assert saved["train_time_s"] < timing["train_s"] < saved["train_time_s"] + restart_compile


def test_sigterm_in_process_saves_the_current_step_and_the_rerun_matches(tmp_path, reference_run):
    """SIGTERM while training: a checkpoint of exactly the current step, TrainingInterrupted (exit code 143)."""
    workdir = str(tmp_path / "run")
    metrics = os.path.join(workdir, "metrics.jsonl")
    stray = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stray.append(signum))  # outside the loop

    def send_when_training():
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send_when_training, daemon=True)
    try:
        sender.start()
        with pytest.raises(TrainingInterrupted) as info:
            train_and_evaluate(reference_config(), workdir)
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    stopped = info.value
    assert not stray, "SIGTERM arrived outside the training loop"
    assert stopped.exit_code == 143 and stopped.signal_name == "SIGTERM"
    assert 0 < stopped.step < REFERENCE_STEPS
    assert f"Stopped by SIGTERM at step {stopped.step} of {REFERENCE_STEPS}" in str(stopped)
    assert "Rerun the same command" in str(stopped)
    assert committed_steps(workdir)[-1] == stopped.step and not orbax_tmp_dirs(workdir)
    assert signal.getsignal(signal.SIGTERM) is previous  # the loop's handler is gone

    results = train_and_evaluate(reference_config(), workdir)
    _same_final_metrics(results, reference_run[1])
    keys = [(r["step"], "eval_accuracy" in r) for r in records(workdir)]
    assert len(keys) == len(set(keys)) and [s for s, _ in keys] == sorted(s for s, _ in keys)
