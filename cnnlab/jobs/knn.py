"""The ``knn`` job: k and the metric chosen by cross-validation on the training split, then test accuracy.

    python -m experiments.main --config=experiments/configs/knn.py:fashion_mnist --workdir=runs/knn_fm

``run(config, workdir)``:
  1. loads the train and test splits;
  2. cross-validates every (k, metric) of ``config.ks`` x ``config.metrics`` with ``config.folds`` folds on the
     training split (or a seeded subsample of ``config.cv_train_size`` images: the CV searches folds x metrics
     times, which on 2 CPU cores is the costly part);
  3. places the FULL training split on the devices once (``knn.Index``) and classifies the test split
     (``config.test_size`` images, 0 = all) in query batches of ``config.query_batch``;
  4. writes config.json, results.json (``cnnlab.jobs.workdir`` schema), predictions.npy and test_labels.npy
     (int32 per test image), results.md and the pictures:
     neighbours.png (nearest training images of a few test images), regions.png (the decision regions of the
     run's own data, projected to 2-D by PCA, with the run's k, metric and tie rule), cv_accuracy.png, and
     regions_toy.png (the lecture's illustration on toy 2-D data).
"""

from __future__ import annotations

import time

import numpy as np

from cnnlab import data, knn
from cnnlab.jobs import workdir as workdir_lib
from cnnlab.report import neighbours as neighbour_plots


def subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subsample of ``size`` of range(n) (all of them when size is 0 or >= n)."""
    if not size or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def predict_in_batches(index: knn.Index, queries: np.ndarray, *, k: int, metric: str, tie_break: str,
                       batch: int) -> tuple[np.ndarray, float, float, int]:
    """Predictions for ``queries`` in equal-size batches (the last padded by repeating the final query, so every
    batch reuses one compiled program). Returns (predictions [Q], seconds of the first batch (includes
    compilation), seconds of the remaining batches, their number of queries)."""
    n = len(queries)
    batch = min(batch, n)
    predictions = np.empty(n, dtype=np.int64)
    first_s = rest_s = 0.0
    rest_n = 0
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        block = queries[start:stop]
        if len(block) < batch:
            block = np.concatenate([block, np.repeat(block[-1:], batch - len(block), axis=0)])
        began = time.perf_counter()
        predicted = index.predict(block, k=k, metric=metric, tie_break=tie_break)
        elapsed = time.perf_counter() - began
        predictions[start:stop] = predicted[: stop - start]
        if start == 0:
            first_s = elapsed
        else:
            rest_s += elapsed
            rest_n += stop - start
    return predictions, first_s, rest_s, rest_n


def _results_markdown(results: dict, cv: knn.CrossValidation) -> str:
    details, timing = results["details"], results["timing"]
    lines = [
        f"# kNN on {results['dataset']}", "",
        f"Cross-validation: {cv.folds} folds on {details['cv_train_size']:,} training images "
        f"({details['cv_time_s']:.1f} s); test: {results['test']['count']:,} images against all "
        f"{results['splits']['train']:,} training images.", "",
        "| dataset | best k | best metric | CV accuracy (mean +- std) | test accuracy | CV time (s) | "
        "inference s / 1000 queries |",
        "|---|---|---|---|---|---|---|",
        f"| {results['dataset']} | {results['chosen']['k']} | {results['chosen']['metric'].upper()} | "
        f"{details['cv_accuracy']:.4f} +- {details['cv_std']:.4f} | {results['test']['accuracy']:.4f} | "
        f"{details['cv_time_s']:.1f} | {timing['inference_s_per_1000']:.3f} |", "",
        "Cross-validation accuracy (mean +- std over folds):", "",
        "| k | " + " | ".join(m.upper() for m in cv.metrics) + " |",
        "|---|" + "---|" * len(cv.metrics),
    ]
    for j, k in enumerate(cv.ks):
        cells = [f"{cv.mean[j, m]:.4f} +- {cv.std[j, m]:.4f}" for m in range(len(cv.metrics))]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", f"Machine: {workdir_lib.describe_machine(results['machine'])}", ""]
    for caption, name in details["plots"].items():
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)


def run(config, workdir: str) -> dict:
    """Runs the kNN experiment described by ``config`` (experiments/configs/knn.py) in ``workdir``; returns the
    results record (also results.json)."""
    began_job = time.perf_counter()
    wd = workdir_lib.Workdir(workdir)
    with wd.locked(command=f"knn on {config.dataset}"):
        wd.write_config(config)
        train = data.load(config.dataset, "train", data_dir=config.get("data_dir"))
        test = data.load(config.dataset, "test", data_dir=config.get("data_dir"))
        train_x, train_y = train.images, train.labels
        # A seeds run fixes the test subset for all its seeds (config.test_subset_seed): same images, paired stats.
        test_idx = subsample(len(test.images), config.test_size, config.get("test_subset_seed", config.seed + 1))
        test_x, test_y = test.images[test_idx], test.labels[test_idx]
        budget = int(config.memory_budget_bytes)

        cv_idx = subsample(len(train_x), config.cv_train_size, config.seed)
        began = time.perf_counter()
        cv = knn.cross_validate(train_x[cv_idx], train_y[cv_idx], ks=list(config.ks), metrics=list(config.metrics),
                                folds=config.folds, seed=config.seed, tie_break=config.tie_break,
                                memory_budget_bytes=budget)
        cv_time_s = time.perf_counter() - began

        began = time.perf_counter()
        index = knn.Index(train_x, train_y, memory_budget_bytes=budget)  # checked and placed on devices once
        fit_time_s = time.perf_counter() - began
        options = dict(k=cv.best_k, metric=cv.best_metric, tie_break=config.tie_break, batch=config.query_batch)
        predictions, first_s, rest_s, rest_n = predict_in_batches(index, test_x, **options)
        if rest_n == 0:  # a single batch: time it again, now compiled
            began = time.perf_counter()
            predict_in_batches(index, test_x, **options)
            rest_s, rest_n = time.perf_counter() - began, len(test_x)
        test_accuracy = float(np.mean(predictions == test_y))

        # Pictures: nearest training images of a few test images, the run's decision regions, the CV curve.
        shown = np.random.default_rng(config.seed).choice(len(test_x), min(config.num_shown_queries, len(test_x)),
                                                          replace=False)
        dist, idx = index.nearest(test_x[shown], k=config.num_shown_neighbours, metric=cv.best_metric)
        idx = np.asarray(idx)
        toy_points, toy_labels = knn.toy_2d_dataset(config.seed)
        toy_panels = [knn.decision_grid(toy_points, toy_labels, k=k, metric=metric, tie_break="smallest_label")
                      for k in (1, 5) for metric in ("l1", "l2")]
        regions = knn.decision_regions(train_x, train_y, k=cv.best_k, metric=cv.best_metric,
                                       tie_break=config.tie_break, seed=config.seed)
        plots = {
            "Nearest training images": neighbour_plots.plot_neighbours(
                test_x[shown], test_y[shown], train_x[idx], train_y[idx], wd.file("neighbours.png"),
                class_names=test.class_names, distances=np.asarray(dist),
                title=f"{config.dataset}: {config.num_shown_neighbours} nearest training images "
                      f"({cv.best_metric.upper()}), green = same label as the query, red = different"),
            "Decision regions of this run (PCA projection)": neighbour_plots.plot_decision_regions(
                regions, wd.file("regions.png"), class_names=train.class_names,
                title=f"{config.dataset}: kNN decision regions of this run, in the PCA plane of its training set"),
            "Cross-validation accuracy": neighbour_plots.plot_cv_accuracy(
                cv, wd.file("cv_accuracy.png"),
                title=f"{config.dataset}: {cv.folds}-fold CV on {len(cv_idx)} training images"),
            "Lecture illustration: toy 2-D data": neighbour_plots.plot_toy_decision_regions(
                toy_panels, wd.file("regions_toy.png")),
        }
        cv_std = float(cv.std[cv.ks.index(cv.best_k), cv.metrics.index(cv.best_metric)])
        results = workdir_lib.results_record(
            kind="knn", dataset=config.dataset, train_count=len(train_x), test_count=len(test_x),
            test_accuracy=test_accuracy, train_s=fit_time_s + cv_time_s, compile_s=first_s,
            inference_s_per_1000=1000.0 * rest_s / rest_n, wall_s=time.perf_counter() - began_job,
            model_name="knn", model_bytes=index.nbytes,
            chosen={"k": cv.best_k, "metric": cv.best_metric}, chosen_text=f"k={cv.best_k}, {cv.best_metric.upper()}",
            details={"tie_break": config.tie_break, "cv_train_size": int(len(cv_idx)), "cv_accuracy": cv.best_accuracy,
                     "cv_std": cv_std, "cv_time_s": cv_time_s, "fit_time_s": fit_time_s,
                     "cross_validation": cv.to_dict(),
                     "plots": {caption: path.rsplit("/", 1)[-1] for caption, path in plots.items()}})
        wd.write_results(results)
        wd.write_predictions(predictions, test_y)
        report = wd.write_text("results.md", _results_markdown(results, cv))
        print(f"kNN on {config.dataset}: k={cv.best_k}, {cv.best_metric.upper()} (CV {cv.best_accuracy:.4f}), test "
              f"accuracy {test_accuracy:.4f}", flush=True)
        print(f"Results: {wd.file(workdir_lib.RESULTS_FILE)}  Report: {report}", flush=True)
    return results
