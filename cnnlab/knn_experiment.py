"""The kNN experiment: cross-validated choice of k and metric on the training split, then test accuracy.

    python -m experiments.main --config=experiments/configs/knn.py:fashion_mnist --workdir=/tmp/knn_fm

``run(config, workdir)`` (called by experiments/main.py for ``config.kind == "knn"``):
  1. loads the train and test splits with ``cnnlab.data.load``;
  2. cross-validates every (k, metric) of ``config.ks`` x ``config.metrics`` with ``config.folds`` folds on the
     training split (or a seeded subsample of ``config.cv_train_size`` images: the CV searches folds x metrics
     times, which on 2 CPU cores is the costly part);
  3. classifies the test split (``config.test_size`` images, 0 = all) against the FULL training split with the
     best pair, in query batches of ``config.query_batch`` (one compiled program for all batches);
  4. writes config.json, results.json, results.md and the pictures: neighbours.png (10 nearest training images
     of a few test images), regions.png (2-D decision regions of a toy problem), cv_accuracy.png.
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import numpy as np

from cnnlab import knn
from cnnlab.report import neighbours as neighbour_plots


def _device_description() -> str:
    devices = jax.devices()
    kind = devices[0].device_kind
    cpu = platform.processor() or platform.machine()
    return f"{len(devices)} x {devices[0].platform} ({kind}); host {cpu}, {os.cpu_count()} CPU cores"


def _subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subsample of ``size`` of range(n) (all of them when size is 0 or >= n)."""
    if not size or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def _predict_in_batches(train_x, train_y, test_x, *, k, metric, tie_break, batch, memory_budget_bytes):
    """Predictions for test_x in equal-size query batches (the last one padded by repeating the final query, so
    every batch reuses one compiled program). Returns (predictions [Q], seconds of the first batch (includes
    compilation), seconds of the remaining batches, their number of queries)."""
    n = len(test_x)
    batch = min(batch, n)
    predictions = np.empty(n, dtype=np.asarray(train_y).dtype)
    first_s = rest_s = 0.0
    rest_n = 0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        queries = test_x[start:stop]
        if len(queries) < batch:
            queries = np.concatenate([queries, np.repeat(queries[-1:], batch - len(queries), axis=0)])
        began = time.perf_counter()
        predicted = knn.predict(train_x, train_y, queries, k=k, metric=metric, tie_break=tie_break,
                                memory_budget_bytes=memory_budget_bytes)
        elapsed = time.perf_counter() - began
        predictions[start:stop] = predicted[: stop - start]
        if start == 0:
            first_s = elapsed
        else:
            rest_s += elapsed
            rest_n += stop - start
    return predictions, first_s, rest_s, rest_n


def _results_markdown(results: dict, cv: knn.CrossValidation) -> str:
    lines = [
        f"# kNN on {results['dataset']}",
        "",
        f"Cross-validation: {cv.folds} folds on {results['cv_train_size']} training images "
        f"({results['cv_time_s']:.1f} s); test: {results['test_size']} images against all "
        f"{results['train_size']} training images.",
        "",
        "| dataset | best k | best metric | CV accuracy (mean +- std) | test accuracy | CV time (s) | "
        "test time (s) | inference s / 1000 queries |",
        "|---|---|---|---|---|---|---|---|",
        f"| {results['dataset']} | {results['k']} | {results['metric'].upper()} | "
        f"{results['cv_accuracy']:.4f} +- {results['cv_std']:.4f} | {results['test_accuracy']:.4f} | "
        f"{results['cv_time_s']:.1f} | {results['test_time_s']:.1f} | {results['inference_s_per_1000']:.3f} |",
        "",
        "Cross-validation accuracy (mean +- std over folds):",
        "",
        "| k | " + " | ".join(m.upper() for m in cv.metrics) + " |",
        "|---|" + "---|" * len(cv.metrics),
    ]
    for j, k in enumerate(cv.ks):
        cells = [f"{cv.mean[j, m]:.4f} +- {cv.std[j, m]:.4f}" for m in range(len(cv.metrics))]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", f"Device: {results['device']}", ""]
    return "\n".join(lines)


def run(config, workdir: str) -> dict:
    """Runs the experiment described by ``config`` (see experiments/configs/knn.py) and writes its outputs into
    ``workdir``. Returns the results dict (also written as results.json)."""
    from cnnlab import data  # imported here: the data layer is only needed when an experiment runs

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort") else json.dumps(dict(config)))

    train = data.load(config.dataset, "train", data_dir=config.get("data_dir"))
    test = data.load(config.dataset, "test", data_dir=config.get("data_dir"))
    train_x, train_y = train.images, train.labels
    test_idx = _subsample(len(test.images), config.test_size, config.seed + 1)
    test_x, test_y = test.images[test_idx], test.labels[test_idx]
    budget = int(config.memory_budget_bytes)

    cv_idx = _subsample(len(train_x), config.cv_train_size, config.seed)
    began = time.perf_counter()
    cv = knn.cross_validate(train_x[cv_idx], train_y[cv_idx], ks=list(config.ks), metrics=list(config.metrics),
                            folds=config.folds, seed=config.seed, tie_break=config.tie_break,
                            memory_budget_bytes=budget)
    cv_time_s = time.perf_counter() - began

    predictions, first_s, rest_s, rest_n = _predict_in_batches(
        train_x, train_y, test_x, k=cv.best_k, metric=cv.best_metric, tie_break=config.tie_break,
        batch=config.query_batch, memory_budget_bytes=budget)
    test_time_s = first_s + rest_s
    if rest_n == 0:  # a single batch: time it again, now compiled
        began = time.perf_counter()
        _predict_in_batches(train_x, train_y, test_x, k=cv.best_k, metric=cv.best_metric,
                            tie_break=config.tie_break, batch=config.query_batch, memory_budget_bytes=budget)
        rest_s, rest_n = time.perf_counter() - began, len(test_x)
    test_accuracy = float(np.mean(predictions == test_y))

    results = {
        "dataset": config.dataset,
        "k": cv.best_k,
        "metric": cv.best_metric,
        "tie_break": config.tie_break,
        "test_accuracy": test_accuracy,
        "test_size": int(len(test_x)),
        "train_size": int(len(train_x)),
        "cv_train_size": int(len(cv_idx)),
        "cv_accuracy": cv.best_accuracy,
        "cv_std": float(cv.std[cv.ks.index(cv.best_k), cv.metrics.index(cv.best_metric)]),
        "cv_time_s": cv_time_s,
        "fit_time_s": 0.0,  # kNN has no training beyond storing the data; the choice of (k, metric) is cv_time_s
        "test_time_s": test_time_s,
        "first_batch_s_with_compile": first_s,
        "inference_s_per_1000": 1000.0 * rest_s / rest_n,
        "device": _device_description(),
        "cross_validation": cv.to_dict(),
    }

    # Pictures: the nearest training images of a few test images (best metric), toy decision regions, CV curve.
    shown = np.random.default_rng(config.seed).choice(len(test_x), min(config.num_shown_queries, len(test_x)),
                                                      replace=False)
    dist, idx = knn.nearest(train_x, test_x[shown], k=config.num_shown_neighbours, metric=cv.best_metric)
    idx = np.asarray(idx)
    plots = {
        "neighbours": neighbour_plots.plot_neighbours(
            test_x[shown], test_y[shown], train_x[idx], train_y[idx], os.path.join(workdir, "neighbours.png"),
            class_names=test.class_names, distances=np.asarray(dist),
            title=f"{config.dataset}: {config.num_shown_neighbours} nearest training images ({cv.best_metric.upper()}),"
                  " green = same label as the query, red = different"),
        "regions": neighbour_plots.plot_decision_regions(
            *neighbour_plots.toy_2d_dataset(config.seed), os.path.join(workdir, "regions.png"), ks=(1, 5),
            metrics=("l1", "l2")),
        "cv_accuracy": neighbour_plots.plot_cv_accuracy(
            cv, os.path.join(workdir, "cv_accuracy.png"),
            title=f"{config.dataset}: {cv.folds}-fold CV on {len(cv_idx)} training images"),
    }
    results["plots"] = {name: os.path.basename(path) for name, path in plots.items()}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(_results_markdown(results, cv))
    return results
