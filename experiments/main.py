"""The experiment runner: one command for every experiment cnnlab has.

    python -m experiments.main --config=experiments/configs/NAME.py[:ARG] --workdir=DIR [--config.FIELD=VALUE ...]

The config's ``kind`` field picks the job from ``cnnlab.jobs.JOBS`` (train, knn, classical, compare; default
train). ``--mode=eval`` evaluates a training run's best checkpoint. Every job writes config.json, results.json
(one schema for every job) and its report into DIR, and ends by printing its headline result and where the
results and report are.

A user error (an unknown field or name, a missing file, a bad value, a busy or unusable workdir, a checkpoint
of another run) prints one line on stderr and exits with status 2; ``--verbose`` shows the traceback. SIGTERM
and SIGINT during training save a checkpoint and exit with 128 + the signal number; rerunning resumes.
"""

from __future__ import annotations

import os
import sys

# Quiet start-up: no "Unable to initialize backend 'tpu'" on machines without one, no C++ INFO lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# Before any thread allocates: XLA:CPU's per-step scratch buffer stays mapped between steps (cnnlab.native.memory).
from cnnlab.native import memory as _memory  # noqa: E402

_memory.keep_freed_memory()

from absl import app, flags, logging  # noqa: E402

from experiments.config_loading import ConfigError, load_config  # noqa: E402

_CONFIG = flags.DEFINE_string("config", None, "Experiment config file, PATH[:ARG] (see experiments/configs).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and the report.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if DIR has checkpoints) or eval.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks of user errors, and INFO logs.")
flags.mark_flags_as_required(["config", "workdir"])

USER_ERRORS = (ConfigError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError)


def _user_error_types():
    from cnnlab.data.formats import RawFormatError
    from cnnlab.jobs.workdir import WorkdirError
    from cnnlab.train import CheckpointError

    return USER_ERRORS + (WorkdirError, CheckpointError, RawFormatError)


def run(config_spec: str, workdir: str, overrides: list[str], mode: str = "train") -> dict:
    """Loads the config and runs its job (or evaluates a checkpoint): what ``main`` does, minus the exits."""
    config = load_config(config_spec, overrides)
    from cnnlab import jobs  # after the config: a typo in it should not wait for jax to import

    jobs.apply_deterministic(config)  # XLA_FLAGS are read when jax starts its backend: before any computation

    kind = config.get("kind", "train")
    if mode == "eval":
        if kind != "train":
            raise ConfigError(f"--mode=eval evaluates training runs; this config's kind is {kind!r}.")
        return jobs.evaluate_checkpoint(config, workdir)
    logging.info("Running %s job in %s", kind, workdir)
    return jobs.run(config, workdir)


def main(argv, overrides):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _VERBOSE.value:
        logging.set_verbosity(logging.WARNING)
    from cnnlab.train import TrainingInterrupted

    try:
        run(_CONFIG.value, _WORKDIR.value, overrides, _MODE.value)
    except TrainingInterrupted as stopped:
        print(stopped, file=sys.stderr, flush=True)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr, flush=True)
        sys.exit(130)
    except _user_error_types() as error:
        if _VERBOSE.value:
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def entry(argv: list[str] | None = None) -> None:
    """``--config.FIELD=VALUE`` arguments are taken out before absl parses the rest, and applied to the config."""
    argv = list(sys.argv if argv is None else argv)
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    rest = [argv[0]] + [a for a in argv[1:] if not a.startswith("--config.")]
    app.run(lambda remaining: main(remaining, overrides), argv=rest)


if __name__ == "__main__":
    entry()
