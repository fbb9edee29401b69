"""n-fold cross-validation of k and the metric.

    cv = cross_validate(train_x, train_y, ks=[1, 3, 5], metrics=["l1", "l2"], folds=5, seed=0)
    cv.accuracy [len(ks), len(metrics), folds];  cv.mean, cv.std;  cv.best_k, cv.best_metric;  cv.to_dict()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from cnnlab.knn.search import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    METRICS,
    arithmetic_mode,
    block_plan,
    check_finite,
    check_mesh,
    check_metric,
    check_points,
    place_queries,
    place_train,
    replicated_count,
    run_search,
    value_range,
)
from cnnlab.knn.vote import check_labels, check_tie_break, encode_labels, vote


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """A seeded shuffled split of range(n) into ``folds`` disjoint parts of sizes differing by at most one."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an integer between 2 and the number of training points ({n}), got {folds}.")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


@dataclasses.dataclass
class CrossValidation:
    """Accuracies of k-fold cross-validation.

    accuracy: [len(ks), len(metrics), folds] fraction correct on each held-out fold.
    mean, std: [len(ks), len(metrics)] over folds (std with ddof=0).
    best_k, best_metric, best_accuracy: the pair with the highest mean (ties: smaller k, then metric order).
    """

    ks: list[int]
    metrics: list[str]
    folds: int
    seed: int
    accuracy: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    best_k: int
    best_metric: str
    best_accuracy: float

    def to_dict(self) -> dict:
        return {
            "ks": list(self.ks),
            "metrics": list(self.metrics),
            "folds": self.folds,
            "seed": self.seed,
            "accuracy": self.accuracy.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "best": {"k": self.best_k, "metric": self.best_metric, "mean_accuracy": self.best_accuracy},
        }


def _check_ks(ks) -> list[int]:
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence | np.ndarray):
        raise TypeError(f"ks must be a list of integers such as [1, 3, 5], got {ks!r}.")
    for k in ks:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"ks must hold integers (numbers of neighbours), got {k!r} in {list(ks)}; "
                            "pass e.g. ks=[1, 3, 5].")
    return [int(k) for k in ks]


def _check_metrics(metrics) -> list[str]:
    if isinstance(metrics, str):  # metrics="l1" means the one metric "l1", not the letters "l" and "1"
        metrics = [metrics]
    if not isinstance(metrics, Sequence | np.ndarray):
        raise TypeError(f"metrics must be a metric name or a list of them such as ['l1', 'l2'], got {metrics!r}.")
    return [check_metric(m) for m in metrics]


def cross_validate(
    train_x,
    train_y,
    *,
    ks: Sequence[int],
    metrics: Sequence[str] | str = METRICS,
    folds: int = 5,
    seed: int = 0,
    tie_break: str = "nearest",
    mesh: jax.sharding.Mesh | None = None,
    query_block: int | None = None,
    train_block: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> CrossValidation:
    """n-fold cross-validation of k and the metric.

    ks: integers (a float such as 2.5 or a bool raises a TypeError rather than being truncated), each between
    1 and the smallest training fold. metrics: a list of names from ``METRICS``; a single name such as "l1"
    is taken as ["l1"]. The other arguments as ``predict``.

    For each fold and metric the neighbours are searched once, for the largest k; every smaller k votes over
    a prefix of that list (the k nearest are the first k of the max(ks) nearest), so the cost is
    folds x metrics searches whatever the number of ks. Every fold's training rows and held-out rows are
    padded to common sizes, so each metric compiles one program.
    """
    train2d, _ = check_points(train_x, "train_x")
    n = train2d.shape[0]
    labels = check_labels(train_y, n)
    ks = _check_ks(ks)
    metrics = _check_metrics(metrics)
    if not ks or not metrics:
        raise ValueError("ks and metrics must each name at least one value.")
    check_tie_break(tie_break)
    parts = fold_indices(n, folds, seed)
    smallest_train = n - max(len(p) for p in parts)
    if min(ks) < 1 or max(ks) > smallest_train:
        raise ValueError(f"every k must be between 1 and the training fold size ({smallest_train}), got {ks}.")
    check_finite(train2d, "train_x")
    mesh = check_mesh(mesh)
    classes, encoded = encode_labels(labels)
    host = np.asarray(train2d)
    train_range = value_range(host)  # the same for every fold: one arithmetic mode (one program) per metric
    accuracy = np.zeros((len(ks), len(metrics), folds))
    k_max = max(ks)
    # Training padding is ignored through the number of valid rows; held-out padding repeats a row and is
    # dropped.
    n_fold_train = n - min(len(p) for p in parts)
    n_held_out = max(len(p) for p in parts)
    for m, metric in enumerate(metrics):
        mode = arithmetic_mode(train_range, train_range, host.shape[1], metric)
        plan = block_plan(
            n_fold_train, n_held_out, host.shape[1], k=k_max, metric=metric, mode=mode.kind,
            num_devices=mesh.devices.size, query_block=query_block, train_block=train_block,
            memory_budget_bytes=memory_budget_bytes,
        )
        for f, held_out in enumerate(parts):
            keep = np.ones(n, bool)
            keep[held_out] = False
            fold_x = np.zeros((n_fold_train, host.shape[1]), host.dtype)
            fold_x[: n - len(held_out)] = host[keep]
            fold_y = encoded[keep]
            val_x = host[np.concatenate([held_out, np.repeat(held_out[-1:], n_held_out - len(held_out))])]
            _, idx = run_search(
                place_train(fold_x, mesh), place_queries(val_x, mesh), replicated_count(n - len(held_out), mesh),
                k=k_max, metric=metric, mode=mode, mesh=mesh, plan=plan,
            )
            neighbour_labels = fold_y[np.asarray(idx)[: len(held_out)]]
            for j, k in enumerate(ks):
                predicted = np.asarray(vote(neighbour_labels[:, :k], len(classes), tie_break=tie_break))
                accuracy[j, m, f] = float(np.mean(predicted == encoded[held_out]))
    mean, std = accuracy.mean(axis=2), accuracy.std(axis=2)
    order = [(-mean[j, m], ks[j], m) for j in range(len(ks)) for m in range(len(metrics))]
    _, best_k, best_m = min(order)
    return CrossValidation(
        ks=ks, metrics=metrics, folds=folds, seed=seed, accuracy=accuracy, mean=mean, std=std,
        best_k=best_k, best_metric=metrics[best_m], best_accuracy=float(mean[ks.index(best_k), best_m]),
    )
