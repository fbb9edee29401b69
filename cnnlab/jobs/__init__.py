"""The jobs cnnlab runs, in one table, and what every job writes (``workdir``).

    from cnnlab import jobs
    results = jobs.run(config, "runs/lenet5")          # config.kind picks the job (default "train")
    results = jobs.train_and_evaluate(config, "runs/lenet5")

Every job takes ``(config, workdir)``, holds the workdir's lock for its whole life, writes config.json and a
results.json of one schema (``workdir.results_record``), and ends by printing its headline result and the paths
of its results and report. ``experiments/main.py`` and the ``compare`` job dispatch through ``JOBS``.
"""

from cnnlab.jobs import classical, compare, knn, train, workdir
from cnnlab.jobs.train import evaluate_checkpoint, train_and_evaluate

JOBS = {
    "train": train.train_and_evaluate,
    "knn": knn.run,
    "classical": classical.run,
    "compare": compare.run,
}


def run(config, workdir_path: str) -> dict:
    """Runs the job ``config.kind`` (default "train") in ``workdir_path``; returns its results record."""
    kind = config.get("kind", "train")
    if kind not in JOBS:
        raise ValueError(f"Unknown job kind {kind!r}; known kinds: {sorted(JOBS)}. Set config.kind to one of them.")
    return JOBS[kind](config, workdir_path)


__all__ = ["JOBS", "run", "train_and_evaluate", "evaluate_checkpoint", "workdir"]
