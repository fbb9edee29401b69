"""The jobs cnnlab runs, in one table, and what every job writes (``workdir``).

    from cnnlab import jobs
    results = jobs.run(config, "runs/lenet5")          # config.kind picks the job (default "train")
    results = jobs.train_and_evaluate(config, "runs/lenet5")

Every job takes ``(config, workdir)``, holds the workdir's lock for its whole life, writes config.json and a
results.json of one schema (``workdir.results_record``), and ends by printing its headline result and the paths
of its results and report. ``experiments/main.py`` and the ``compare`` job dispatch through ``JOBS``.

``run`` also owns the two fields every experiment has: ``config.seeds`` = N > 1 runs a train, knn or classical
job over N seeds (``seeds.run``: ``workdir/seed_<n>/`` plus an aggregate; compare passes its seeds to each
method), and ``config.deterministic`` asks XLA for deterministic GPU kernels (``apply_deterministic``).
"""

import os

from cnnlab.jobs import classical, compare, knn, seeds, train, workdir
from cnnlab.jobs.train import evaluate_checkpoint, train_and_evaluate

JOBS = {
    "train": train.train_and_evaluate,
    "knn": knn.run,
    "classical": classical.run,
    "compare": compare.run,
}

# XLA:GPU's switch for run-to-run reproducible kernels (no atomics in reductions and scatters, deterministic
# convolution algorithms). Read once, when jax starts its backend.
DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def apply_deterministic(config, environ=os.environ) -> bool:
    """With ``config.deterministic``, adds ``DETERMINISTIC_XLA_FLAG`` to XLA_FLAGS; returns whether it is set.

    XLA reads XLA_FLAGS when jax initialises its backend (the first array, device query or jit call), so this
    must run before that: ``experiments/main.py`` calls it right after loading the config. Called later, when the
    backend already runs without the flag, it raises a ValueError saying how to set it instead.
    """
    if not config.get("deterministic", False):
        return False
    flags = environ.get("XLA_FLAGS", "")
    if DETERMINISTIC_XLA_FLAG in flags.split():
        return True
    from jax._src import xla_bridge  # the public API has no "is the backend up yet" query

    if xla_bridge.backends_are_initialized():
        raise ValueError("config.deterministic=True, but jax's backend already started without "
                         f"{DETERMINISTIC_XLA_FLAG}: set XLA_FLAGS='{DETERMINISTIC_XLA_FLAG}' in the environment, or "
                         "apply jobs.apply_deterministic(config) before the first jax computation.")
    environ["XLA_FLAGS"] = f"{flags} {DETERMINISTIC_XLA_FLAG}".strip()
    return True


def run(config, workdir_path: str) -> dict:
    """Runs the job ``config.kind`` (default "train") in ``workdir_path``; returns its results record.

    With ``config.seeds`` > 1 (train, knn, classical) the job runs once per seed under ``workdir_path/seed_<n>/``
    and the returned record is the aggregate (``seeds.run``).
    """
    kind = config.get("kind", "train")
    if kind not in JOBS:
        raise ValueError(f"Unknown job kind {kind!r}; known kinds: {sorted(JOBS)}. Set config.kind to one of them.")
    apply_deterministic(config)
    if kind != "compare" and seeds.num_seeds(config) > 1:
        return seeds.run(config, workdir_path)
    return JOBS[kind](config, workdir_path)


__all__ = ["JOBS", "run", "train_and_evaluate", "evaluate_checkpoint", "workdir", "seeds", "apply_deterministic"]
