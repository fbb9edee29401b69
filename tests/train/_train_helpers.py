"""Helpers of the training tests: the tiny config, the reference run's config and command line, workdir readers."""

import json
import os
import subprocess
import sys

from experiments.configs import common, lenet5_digits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The reference run: 3 epochs of 44 steps, one device, one step per dispatch (one quick compilation), a log and
# a checkpoint every 11 steps.
# Subprocesses get these as --config.FIELD=VALUE, in-process runs as fields of lenet5_digits.get_config().
REFERENCE_OVERRIDES = {"num_epochs": 3, "batch_size": 32, "eval_batch_size": 120, "checkpoint_every_steps": 11,
                       "steps_per_dispatch": 1, "log_every_steps": 11, "report": False, "augment": True,
                       "num_devices": 1, "keep_checkpoints": 12}  # every checkpoint kept: tests rewind to any
REFERENCE_STEPS = 132
TIMING_KEYS = {"images_per_s", "elapsed_s"}


def tiny_config(**overrides):
    """LeNet-5 on sklearn digits (1,438 train / 359 test), batch 32: one epoch is 44 steps."""
    c = common.base_config()
    c.dataset = "digits"
    c.image_size = 28
    c.model = "lenet5"
    c.num_epochs = 1
    c.batch_size = 32
    c.eval_batch_size = 120
    c.optimizer = "sgd"
    c.learning_rate = 0.05
    c.weight_decay = 1e-4
    c.schedule = "constant"
    c.steps_per_dispatch = 1  # one program length: one compilation per run
    c.log_every_steps = 10
    c.checkpoint_every_steps = 0
    c.report = False
    c.num_devices = 1
    for key, value in overrides.items():
        c[key] = value
    return c


def reference_config(**changes):
    config = lenet5_digits.get_config()
    for key, value in {**REFERENCE_OVERRIDES, **changes}.items():
        config[key] = value
    return config


def main_command(workdir, **changes):
    """The experiments/main.py command line of the reference run (with ``changes``) in ``workdir``."""
    overrides = {**REFERENCE_OVERRIDES, **changes}
    return [sys.executable, "-m", "experiments.main", "--config=experiments/configs/lenet5_digits.py",
            f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def run_main(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.main"] + list(args), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def records(workdir, drop_timing=True):
    """metrics.jsonl's records, without the wall-clock fields (which differ between identical runs)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not (drop_timing and k in TIMING_KEYS)} for line in f]


def committed_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def orbax_tmp_dirs(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(directory) if not n.isdigit()] if os.path.isdir(directory) else []


def kill_after_checkpoint(workdir, step=20, timeout=240):
    """Start the main command on ``workdir``, SIGKILL it once a checkpoint at ``step`` or later is committed, and
    check that it died by the signal before finishing (no results.json)."""
    import signal
    import time

    process = subprocess.Popen(main_command(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not [s for s in committed_steps(workdir) if s >= step] and process.poll() is None:
        assert time.time() < deadline, "the training subprocess wrote no checkpoint in time"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not os.path.exists(os.path.join(workdir, "results.json")), "the run finished before it was killed"
