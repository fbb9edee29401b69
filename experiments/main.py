"""The experiment runner: one command for every experiment cnnlab has.

    python -m experiments.main --config=experiments/configs/NAME.py[:ARG] --workdir=DIR [--config.FIELD=VALUE ...]

The config's ``kind`` field picks the job (default ``"train"``):
  train      cnnlab.train.train_and_evaluate(config, workdir)    (--mode=eval evaluates the best checkpoint)
  knn        cnnlab.knn_experiment.run(config, workdir)
  classical  cnnlab.classical.run_experiment(config, workdir)
  compare    cnnlab.compare.run(config, workdir)
Every job writes its outputs (config.json, metrics, plots, report) into --workdir.
"""

import importlib

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and the report.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes if DIR has checkpoints) or eval.")
flags.mark_flags_as_required(["config", "workdir"])

# kind -> (module, function). Imported lazily so one job does not pay for the others' imports.
_JOBS = {
    "train": ("cnnlab.train", "train_and_evaluate"),
    "knn": ("cnnlab.knn_experiment", "run"),
    "classical": ("cnnlab.classical", "run_experiment"),
    "compare": ("cnnlab.compare", "run"),
}


def job_for(kind: str):
    """Returns the function that runs experiments of this ``kind``; unknown kinds list the known ones."""
    if kind not in _JOBS:
        raise ValueError(f"Unknown experiment kind {kind!r}; known kinds: {sorted(_JOBS)}. Set config.kind to one.")
    module, function = _JOBS[kind]
    return getattr(importlib.import_module(module), function)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    kind = config.get("kind", "train")
    logging.info("Running %s experiment in %s", kind, _WORKDIR.value)
    if _MODE.value == "eval":
        if kind != "train":
            raise app.UsageError(f"--mode=eval applies to training experiments, not kind={kind!r}.")
        from cnnlab.train import evaluate_checkpoint

        evaluate_checkpoint(config, _WORKDIR.value)
    else:
        job_for(kind)(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
