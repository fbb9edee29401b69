"""Any job over several seeds: ``--config.seeds=N`` runs seeds ``config.seed + 0 .. N-1`` and aggregates them.

    python -m experiments.main --config=experiments/configs/lenet5_mnist.py --workdir=runs/lenet5 --config.seeds=5
    results = seeds.run(config, "runs/lenet5")        # what cnnlab.jobs.run does when config.seeds > 1

Layout of the workdir::

    config.json            the config as given (seeds=N)
    seed_0/ ... seed_<N-1>/  one complete single run each (config.json with seed=config.seed+n and seeds=1,
                           results.json, metrics.jsonl, predictions.npy, report): every single-run contract holds
                           there (a train seed resumes from its own checkpoints, a finished seed is skipped)
    checkpoints/           stacked train runs only: the one checkpoint of all N seeds (``cnnlab.train.stacked``)
    results.json           the aggregate record: the schema of ``cnnlab.jobs.workdir`` with its ``seeds`` section
                           (per-metric mean, std, min, max, 95% Student-t interval of the mean and N; a bootstrap
                           interval of the accuracy from the seeds' per-image predictions; per-seed values and
                           final parameter hashes); ``test.accuracy`` is the mean over seeds
    report.md              the table, accuracy per seed with the mean's error bar (seeds_accuracy.png) and, for
                           train jobs, the seeds' learning curves as a band (seeds_curves.png)

A rerun skips the seeds whose results.json exists for their config, resumes the unfinished ones (train seeds from
their checkpoints), and rewrites the aggregate. A seed directory holding results of a different config stops the
run with an error naming the fields (use a fresh workdir).

What varies between seeds: everything ``config.seed`` drives (initial parameters, data order, augmentation and
dropout draws; kNN's cross-validation folds and subsample; the classical pipeline's training subset, validation
part and model seeds). What does not: the test images. For kNN and the classical pipeline, whose test subset is
drawn by seed, every seed uses the subset of ``config.seed`` (``test_subset_seed``), so per-image statistics pair.

Train jobs with ``config.seeds_stacked=True`` train the N seeds together (``cnnlab.train.stacked``: one program
with vmap on accelerators, the single runs' programs interleaved on CPU): same per-seed files, one shared
checkpoint; every seed's ``timing.train_s`` is then the time of the whole stacked run (``details.stacked_seeds``
and ``details.stacked_strategy`` say so).
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from cnnlab.jobs import workdir as workdir_lib
from cnnlab.report import seeds as seeds_report
from cnnlab.report import stats

SEED_DIR = "seed_{}"
# Metrics summarised over seeds: name -> (section, field) of the per-seed results records.
METRICS = {"test_accuracy": ("test", "accuracy"), "test_loss": ("test", "loss"),
           "test_top5_accuracy": ("test", "top5_accuracy"), "train_s": ("timing", "train_s"),
           "inference_s_per_1000": ("timing", "inference_s_per_1000")}
BOOTSTRAP_RESAMPLES = 2000


def num_seeds(config) -> int:
    """``config.seeds`` (1 when absent), checked: a positive integer."""
    value = config.get("seeds", 1)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"config.seeds must be a positive integer (the number of seeds), got {value!r}.")
    return int(value)


def seed_values(config) -> list[int]:
    """The seeds of a seeds run: config.seed, config.seed + 1, ..., config.seed + N - 1."""
    base = config.get("seed", 0)
    if isinstance(base, bool) or not isinstance(base, (int, np.integer)) or base < 0:
        raise ValueError(f"config.seed must be a non-negative integer, got {base!r}.")
    return [int(base) + i for i in range(num_seeds(config))]


def seed_config(config, seed: int) -> ml_collections.ConfigDict:
    """The config of one seed's run: ``config`` with seed=``seed`` and seeds=1 (its own single run).

    kNN and classical configs also get ``test_subset_seed`` = the first seed's test-subset seed, so every seed is
    scored on the same test images.
    """
    single = copy.deepcopy(config)
    with single.unlocked():
        single.seeds = 1
        if single.get("kind", "train") in ("knn", "classical") and "test_subset_seed" not in single:
            single.test_subset_seed = int(config.get("seed", 0)) + 1
        single.seed = int(seed)
    return single


def seed_workdir(workdir: str, index: int) -> str:
    return os.path.join(os.path.abspath(workdir), SEED_DIR.format(index))


def is_stacked(config) -> bool:
    """True when the seeds of this train config run as one vmapped program."""
    if not config.get("seeds_stacked", False):
        return False
    if config.get("kind", "train") != "train":
        raise ValueError(f"config.seeds_stacked applies to train jobs; this config's kind is {config.get('kind')!r}. "
                         "Set --config.seeds_stacked=false.")
    return True


# ------------------------------------------------------------------------------------------------ run


def run(config, workdir: str) -> dict:
    """Runs ``config`` over its seeds in ``workdir/seed_<n>/`` and writes the aggregate; returns its record."""
    import cnnlab.jobs  # the JOBS table (this module is imported by cnnlab.jobs)
    from cnnlab.jobs import compare

    began = time.perf_counter()
    kind = config.get("kind", "train")
    if kind not in ("train", "knn", "classical"):
        raise ValueError(f"config.seeds runs train, knn and classical jobs; a {kind!r} job handles seeds itself.")
    seeds = seed_values(config)
    stacked = is_stacked(config)
    wd = workdir_lib.Workdir(workdir, is_chief=_is_chief())
    with wd.locked(command=f"{kind} over {len(seeds)} seeds on {config.get('dataset')}"):
        wd.write_config(config)
        if stacked:
            run_stacked(config, wd, seeds)
        else:
            for index, seed in enumerate(seeds):
                single, where = seed_config(config, seed), seed_workdir(workdir, index)
                if compare.job_is_done(single, where):
                    print(f"seed {seed} ({SEED_DIR.format(index)}): already finished, skipped", flush=True)
                    continue
                print(f"seed {seed} ({SEED_DIR.format(index)}, {index + 1} of {len(seeds)})", flush=True)
                cnnlab.jobs.JOBS[kind](single, where)
        if not wd.is_chief:
            return {}
        return aggregate(config, wd, seeds, wall_s=time.perf_counter() - began, stacked=stacked)


def _is_chief() -> bool:
    import jax

    return jax.process_index() == 0


# ------------------------------------------------------------------------------------------------ aggregate


def _field(results: Mapping, section: str, field: str):
    value = results.get(section, {}).get(field)
    return None if value is None else float(value)


def seed_records(workdir: str, count: int) -> list[dict]:
    """The results records of ``seed_0 .. seed_<count-1>`` (schema-checked); FileNotFoundError names a missing one."""
    records = []
    for index in range(count):
        record = workdir_lib.Workdir(seed_workdir(workdir, index), is_chief=False).read_results()
        if record is None:
            raise FileNotFoundError(f"{seed_workdir(workdir, index)} has no results.json: that seed has not finished;"
                                    " rerun the same command to finish it.")
        records.append(record)
    return records


def per_image_correctness(workdir: str, count: int) -> np.ndarray | None:
    """bool [seeds, test images] from the seeds' predictions.npy, or None when a seed has none or they do not
    score the same images (the bootstrap then has nothing to resample)."""
    rows, labels0 = [], None
    for index in range(count):
        pair = workdir_lib.Workdir(seed_workdir(workdir, index), is_chief=False).read_predictions()
        if pair is None:
            return None
        predictions, labels = pair
        if labels0 is None:
            labels0 = labels
        elif labels.shape != labels0.shape or not np.array_equal(labels, labels0):
            return None
        rows.append(predictions == labels)
    return np.stack(rows)


def seeds_section(records: Sequence[Mapping], seeds: Sequence[int], *, correct: np.ndarray | None,
                  stacked: bool) -> dict:
    """The ``seeds`` section of the aggregate record (``cnnlab.jobs.workdir``'s docstring describes it)."""
    per_seed, metrics = {}, {}
    for name, (section, field) in METRICS.items():
        values = [_field(r, section, field) for r in records]
        per_seed[name] = values
        if all(v is not None for v in values):
            metrics[name] = stats.summarize(values).to_dict()
    bootstrap = None
    if correct is not None:
        low, high = stats.bootstrap_accuracy_interval(correct, resamples=BOOTSTRAP_RESAMPLES)
        bootstrap = {"low": low, "high": high, "confidence": 0.95, "resamples": BOOTSTRAP_RESAMPLES,
                     "test_images": int(correct.shape[1])}
    return {"n": len(seeds), "values": [int(s) for s in seeds],
            "workdirs": [SEED_DIR.format(i) for i in range(len(seeds))], "stacked": bool(stacked),
            "metrics": metrics, "per_seed": per_seed, "accuracy_bootstrap": bootstrap,
            "params_sha256": [r["model"].get("params_sha256") for r in records]}


def aggregate(config, wd: workdir_lib.Workdir, seeds: Sequence[int], *, wall_s: float | None = None,
              stacked: bool = False) -> dict:
    """Reads the seeds' results, writes the aggregate results.json and report.md; returns the record."""
    records = seed_records(wd.path, len(seeds))
    correct = per_image_correctness(wd.path, len(seeds))
    section = seeds_section(records, seeds, correct=correct, stacked=stacked)
    first, accuracy = records[0], section["metrics"]["test_accuracy"]
    mean_of = {name: section["metrics"][name]["mean"] if name in section["metrics"] else None for name in METRICS}
    train_s = [r["timing"]["train_s"] for r in records]
    results = workdir_lib.results_record(
        kind=first["kind"], dataset=first["dataset"], train_count=first["splits"]["train"],
        validation_count=first["splits"]["validation"], test_count=first["test"]["count"],
        test_accuracy=accuracy["mean"], test_top5_accuracy=mean_of["test_top5_accuracy"],
        test_loss=mean_of["test_loss"],
        train_s=train_s[0] if stacked else sum(train_s),  # stacked: each seed reports the one shared program
        inference_s_per_1000=mean_of["inference_s_per_1000"], wall_s=wall_s, model_name=first["model"]["name"],
        num_params=first["model"]["num_params"], model_bytes=first["model"]["bytes"], params_sha256=None,
        chosen={"per_seed": [r["chosen"] for r in records]},
        chosen_text=f"mean of {len(seeds)} seeds ({stats.Summary(**accuracy).text(scale=100, unit='%')})",
        machine=first["machine"],
        details={"seed_results": [f"{d}/{workdir_lib.RESULTS_FILE}" for d in section["workdirs"]],
                 "train_s_meaning": "the one stacked program" if stacked else "sum over seeds"},
        seeds=section)
    results["details"]["report"] = seeds_report.write_seeds_report(
        wd.path, results, title=f"{first['model']['name']} on {first['dataset']} over {len(seeds)} seeds",
        metrics_paths=[os.path.join(wd.path, d, workdir_lib.METRICS_FILE) for d in section["workdirs"]]
        if first["kind"] == "train" else None)
    wd.write_results(results)
    print(f"{len(seeds)} seeds: test accuracy {stats.Summary(**accuracy).text(scale=100, unit='%')}", flush=True)
    print(f"Results: {wd.file(workdir_lib.RESULTS_FILE)}  Report: {results['details']['report']}", flush=True)
    return results


def run_stacked(config, wd: workdir_lib.Workdir, seeds: Sequence[int]) -> None:
    """Trains the seeds together (``cnnlab.train.stacked``) and writes each seed's single-run
    files (config.json, metrics.jsonl, results.json, predictions.npy, tensorboard/, report.md) into seed_<n>/.

    The stacked checkpoints live in ``wd``'s checkpoints/; a rerun resumes from them, and one whose checkpoint is
    final and whose seeds all have results rewrites nothing.
    """
    import dataclasses

    from cnnlab.jobs import train as train_job  # jax and the training stack: only train jobs need them
    from cnnlab.report import tensorboard
    from cnnlab.train import loop, stacked

    began = time.perf_counter()
    loop.validate_config(config)
    seed_wds = [workdir_lib.Workdir(seed_workdir(wd.path, i), is_chief=wd.is_chief) for i in range(len(seeds))]
    singles = [seed_config(config, seed) for seed in seeds]
    with locked_all(seed_wds, command=f"stacked seeds of {wd.path}"):
        srun = stacked.setup(config, seeds)
        with loop.open_checkpoints(srun.run, wd.file("checkpoints")) as checkpoints:
            state, resumed = stacked.restore_latest(srun, checkpoints)
            if resumed.step == srun.run.total_steps and all(w.read_results() is not None for w in seed_wds):
                print(f"Already finished at step {resumed.step}: all {len(seeds)} stacked seeds have results.",
                      flush=True)
                return
            for seed_wd, single in zip(seed_wds, singles):
                seed_wd.write_config(single)
                seed_wd.metrics.rewrite_until(resumed.step)
            if resumed.step and wd.is_chief:
                print(f"Resuming the {len(seeds)} stacked seeds from checkpoint step {resumed.step} of "
                      f"{srun.run.total_steps} in {checkpoints.directory}", flush=True)
            outcome = stacked.train(srun, state, checkpoints, [train_job._RecordSink(w) for w in seed_wds], resumed)
        predictions, labels = stacked.predict_test_split(srun.run, outcome.state, stacked=True)
        wall_s = time.perf_counter() - began
        for index, (seed_wd, single, seed_outcome) in enumerate(zip(seed_wds, singles, outcome.per_seed)):
            seed_run = dataclasses.replace(srun.run, config=single)
            results = train_job._results(seed_run, seed_outcome, wall_s)
            results["details"].update(stacked_seeds=len(seeds), stacked_index=index, stacked_strategy=srun.strategy,
                                      stacked_checkpoints=os.path.relpath(checkpoints.directory, seed_wd.path))
            if not wd.is_chief:
                continue
            seed_wd.write_results(results)
            seed_wd.write_predictions(predictions[index], labels)
            tensorboard.write_scalars_from_metrics(seed_wd.metrics.path, seed_wd.file("tensorboard"))
            if config.get("report", True):
                results["details"]["report"] = train_job._report(seed_wd, seed_run, seed_outcome, results)
                seed_wd.write_results(results)
            print(f"seed {seeds[index]} ({SEED_DIR.format(index)}): test accuracy {results['test']['accuracy']:.4f}",
                  flush=True)


@contextlib.contextmanager
def locked_all(workdirs: Sequence[workdir_lib.Workdir], command: str):
    """Holds the locks of several workdirs (the seeds of a stacked run) for the block."""
    with contextlib.ExitStack() as stack:
        for wd in workdirs:
            stack.enter_context(wd.locked(command=command))
        yield workdirs
