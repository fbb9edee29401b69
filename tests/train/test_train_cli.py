"""The training job from the command line (experiments/main.py): SIGTERM/SIGINT stop with a checkpoint and exit
128 + signal (issue #12), a busy workdir and user errors are one line on stderr and exit status 2 (#14)."""

import glob
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from _train_helpers import (REFERENCE_STEPS, ROOT, committed_steps, main_command, orbax_tmp_dirs, records,
                            run_main)

CONFIG = "--config=experiments/configs/lenet5_digits.py"


def _main_in_process(capsys, *args):
    """(exit status, stdout, stderr) of experiments.main with ``args``, run in this process (no jax start-up)."""
    from absl import flags

    from experiments import main as main_lib

    overrides = [a for a in args if a.startswith("--config.")]
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["main"] + [a for a in args if not a.startswith("--config.")])
    capsys.readouterr()
    try:
        main_lib.main(["main"], overrides)
        status = 0
    except SystemExit as stop:
        status = stop.code
    finally:
        flags.FLAGS.unparse_flags()
    out, err = capsys.readouterr()
    return status, out, err


def _stop_with(sig, workdir, command):
    """Starts ``command``, sends ``sig`` once it has logged a training record; returns (process, stdout, stderr)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0) and process.poll() is None:
        assert time.time() < deadline, "the training subprocess logged nothing in time"
        time.sleep(0.01)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    return process, out, err


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_the_rerun_matches_the_reference(tmp_path, reference_run):
    workdir = str(tmp_path / "run")
    process, _, err = _stop_with(signal.SIGTERM, workdir, main_command(workdir))
    assert process.returncode == 143, err[-3000:]
    step = int(err.split("Stopped by SIGTERM at step ")[1].split()[0])
    assert 0 < step < REFERENCE_STEPS and "Rerun the same command" in err and "Traceback" not in err
    assert committed_steps(workdir)[-1] == step and not orbax_tmp_dirs(workdir)
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    rerun = subprocess.run(main_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resuming from checkpoint step {step} of {REFERENCE_STEPS}" in rerun.stdout
    results, reference = json.load(open(os.path.join(workdir, "results.json"))), reference_run[1]
    for section, key in (("test", "accuracy"), ("test", "loss"), ("details", "eval_confusion")):
        assert results[section][key] == reference[section][key], key  # exact equality
    keys = [(r["step"], "eval_accuracy" in r) for r in records(workdir)]
    assert len(keys) == len(set(keys)) and [s for s, _ in keys] == sorted(s for s, _ in keys)


def test_sigint_saves_a_checkpoint_and_exits_130_without_a_traceback(tmp_path):
    workdir = str(tmp_path / "run")
    # 20 epochs: the signal always lands while training (a 3-epoch run can finish in the time a signal takes).
    process, _, err = _stop_with(signal.SIGINT, workdir, main_command(workdir, num_epochs=20))
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Rerun the same command" in err
    step = int(err.split("Stopped by SIGINT at step ")[1].split()[0])
    assert committed_steps(workdir)[-1] == step and not orbax_tmp_dirs(workdir)


_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("workdir", "cnnlab/jobs/workdir.py")  # stdlib only: no jax
workdir = importlib.util.module_from_spec(spec)
spec.loader.exec_module(workdir)
with workdir.Workdir(sys.argv[1]).locked(command="train lenet5 on digits"):
    print("locked", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def _digest(directory):
    files = sorted(glob.glob(os.path.join(directory, "**"), recursive=True))
    return {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files if os.path.isfile(f)}


def test_second_job_on_a_busy_workdir_exits_2_at_once_and_disturbs_nothing(reference_copy, capsys, monkeypatch):
    from cnnlab.train import loop

    def setup_must_not_run(config):
        raise AssertionError("the busy workdir was noticed only after setting up the run")

    monkeypatch.setattr(loop, "setup", setup_must_not_run)  # refused before loading data or building the model
    workdir = reference_copy
    os.remove(os.path.join(workdir, "results.json"))  # an unfinished run: the second job would train
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _digest(workdir)
        status, out, err = _main_in_process(capsys, CONFIG, f"--workdir={workdir}", "--config.num_epochs=3",
                                            "--config.num_devices=1")
        assert status == 2 and out == ""
        assert len(err.splitlines()) == 1, err
        assert f"is in use by another job (pid {holder.pid} on host {socket.gethostname()}" in err
        assert "command: train lenet5 on digits" in err
        assert _digest(workdir) == before and holder.poll() is None
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_unknown_config_field_is_one_line_from_the_command_line(tmp_path):
    workdir = str(tmp_path / "run")
    result = run_main([CONFIG, f"--workdir={workdir}", "--config.foo=1"])
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "'foo'" in result.stderr and result.stderr.startswith("error: ")
    assert not os.path.exists(os.path.join(workdir, "config.json"))


@pytest.mark.parametrize("args, expected", [
    (["--config=experiments/configs/lenet5_digit.py"], "does not exist. Known configs: .*lenet5_digits.py"),
    ([CONFIG, "--config.model_overrides.bogus=1"], r"Model 'lenet5' has no option\(s\) \['bogus'\]\. Accepted "
                                                   r"overrides: \[.*'style'"),
    ([CONFIG, "--config.model=lenet7"], "Unknown model 'lenet7'. Known models: .*lenet5"),
    ([CONFIG, "--config.num_epoch=3"], "no field 'num_epoch'. Did you mean num_epochs"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys, args, expected):
    import re

    status, _, err = _main_in_process(capsys, *args, f"--workdir={tmp_path / 'run'}", "--config.num_devices=1")
    assert status == 2
    assert len(err.splitlines()) == 1 and re.search(expected, err), err


def test_model_override_from_the_command_line_trains(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    status, out, err = _main_in_process(capsys, CONFIG, f"--workdir={workdir}", "--config.num_train_steps=2",
                                        "--config.model_overrides.style=original", "--config.report=false",
                                        "--config.num_devices=1")
    assert status == 0, err
    assert "Final: test accuracy" in out
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model_overrides"] == {"style": "original"} and saved["num_train_steps"] == 2
    assert json.load(open(os.path.join(workdir, "results.json")))["details"]["steps"] == 2
