"""kNN decision regions in two dimensions: of a real training set projected by PCA, or of 2-D toy points.

    regions = decision_regions(train_x, train_y, k=5, metric="l2", tie_break="nearest")   # PCA to 2-D
    regions.labels [R, R] (class indices into regions.classes), regions.points [P, 2], regions.grid_x [R], ...
    points, labels = toy_2d_dataset(seed=0)                    # the lecture's toy picture
    toy = decision_grid(points, labels, k=5, metric="l1")       # the same dataclass, no projection

Arrays only (no pictures): ``cnnlab.report.neighbours.plot_decision_regions`` and ``plot_toy_decision_regions``
draw them.

What the projected picture shows: kNN run *in the 2-D PCA plane* (the projected training points vote for each
grid point), with the run's k, metric and tie rule. It illustrates how kNN carves that plane; it is not a slice
of the full-dimensional classifier, whose neighbours are found with every feature.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnlab.knn.search import check_k, check_metric, check_points, nearest
from cnnlab.knn.vote import check_labels, check_tie_break, encode_labels, vote

UNDECIDED = -1  # a grid label for a point the tie rule leaves undecided (no rule in TIE_BREAKS does)


@dataclasses.dataclass(frozen=True)
class DecisionRegions:
    """kNN labels over a regular grid in a plane, with the training points shown in that plane.

    grid_x [R], grid_y [R]: the grid's coordinates (first and second axis of the plane).
    labels [R, R] int32: labels[i, j] is the class index (into ``classes``) voted for the point
      (grid_x[j], grid_y[i]), or UNDECIDED (-1) where the tie rule leaves a tie (never with "nearest" or
      "smallest_label", which always decide; the representation keeps room for a rule that does not).
    vote_tied [R, R] bool: more than one class had the top count, so the tie rule decided.
    points [P, 2] float32: the (projected) training points that voted; point_labels [P] int32 class indices.
    classes [C]: the training labels the class indices stand for (sorted, as np.unique).
    k, metric, tie_break: the vote's settings. num_train: training points before subsampling.
    explained_variance_ratio [2] or None: share of the variance along each plane axis (PCA), None for data that
      is already 2-D. mean [D], components [2, D] or None: the projection, x -> (x - mean) @ components.T.
    """

    grid_x: np.ndarray
    grid_y: np.ndarray
    labels: np.ndarray
    vote_tied: np.ndarray
    points: np.ndarray
    point_labels: np.ndarray
    classes: np.ndarray
    k: int
    metric: str
    tie_break: str
    num_train: int
    explained_variance_ratio: np.ndarray | None = None
    mean: np.ndarray | None = None
    components: np.ndarray | None = None


def toy_2d_dataset(seed: int = 0, *, points_per_class: int = 20, num_classes: int = 3, size: int = 100):
    """A small 2-D toy problem for decision-region pictures: ``num_classes`` overlapping clusters of integer
    points in [0, size)^2 (integer coordinates give exact distance ties too). Returns (points [N, 2] int32,
    labels [N] int32)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.25 * size, 0.75 * size, (num_classes, 2))
    points = np.concatenate([rng.normal(c, 0.14 * size, (points_per_class, 2)) for c in centres])
    labels = np.repeat(np.arange(num_classes), points_per_class)
    points = np.clip(np.round(points), 0, size - 1).astype(np.int32)
    return points, labels.astype(np.int32)


def _check_count(value, name: str, smallest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < smallest:
        raise ValueError(f"{name} must be an integer >= {smallest}, got {value!r}.")
    return int(value)


def _grid_vote(points, encoded, num_classes, *, k, metric, tie_break, resolution, margin):
    """Votes of the points [P, 2] (class indices ``encoded``) over a resolution x resolution grid covering
    their bounding box plus ``margin`` [2] on each side. Returns (xs, ys, labels [R, R], tied [R, R])."""
    low, high = points.min(0), points.max(0)
    xs = np.linspace(low[0] - margin[0], high[0] + margin[0], resolution)
    ys = np.linspace(low[1] - margin[1], high[1] + margin[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
    _, idx = nearest(points.astype(np.float32), grid, k=k, metric=metric)
    neighbour_labels = encoded[np.asarray(idx)]
    counts = np.stack([(neighbour_labels == c).sum(1) for c in range(num_classes)], 1)
    tied = (counts == counts.max(1, keepdims=True)).sum(1) > 1
    labels = np.asarray(vote(neighbour_labels, num_classes, tie_break=tie_break)).astype(np.int32)
    return xs, ys, labels.reshape(resolution, resolution), tied.reshape(resolution, resolution)


def decision_grid(points, labels, *, k: int, metric: str, tie_break: str = "nearest",
                  resolution: int = 160) -> DecisionRegions:
    """kNN labels over a regular grid covering 2-D points (the toy picture: no projection). points [N, 2],
    labels [N] integers. The grid spans the points' bounding box plus 8% of its size (plus one unit) on each
    side."""
    points, _ = check_points(points, "points")
    points = np.asarray(points)
    if points.shape[1] != 2:
        raise ValueError(f"points must be [N, 2] for a 2-D grid, got shape {points.shape}; for higher-dimensional "
                         "data use decision_regions (PCA to 2-D).")
    labels = check_labels(labels, len(points))
    check_metric(metric)
    check_tie_break(tie_break)
    check_k(k, len(points))
    resolution = _check_count(resolution, "resolution", 2)
    classes, encoded = encode_labels(labels)
    margin = 0.08 * (points.max(0) - points.min(0) + 1)
    xs, ys, grid_labels, tied = _grid_vote(points, encoded, len(classes), k=k, metric=metric, tie_break=tie_break,
                                           resolution=resolution, margin=margin)
    return DecisionRegions(grid_x=xs, grid_y=ys, labels=grid_labels, vote_tied=tied,
                           points=points.astype(np.float32), point_labels=encoded, classes=classes, k=int(k),
                           metric=metric, tie_break=tie_break, num_train=len(points))


def decision_regions(train_x, train_y, *, k: int, metric: str, tie_break: str = "nearest", resolution: int = 200,
                     max_points: int = 2000, seed: int = 0) -> DecisionRegions:
    """kNN decision regions of a training set in the plane of its first two principal components.

    train_x [N, ...] (flattened), train_y [N] integer labels. A seeded subsample of at most ``max_points``
    points is centred and projected on its two leading right singular vectors (numpy SVD; signs fixed so each
    component's largest loading is positive); a resolution x resolution grid over the projected points'
    bounding box (plus 5% on each side) is classified by kNN among the projected points with this k, metric
    and tie rule. Returns a ``DecisionRegions`` with explained_variance_ratio, mean and components set.
    """
    train2d, _ = check_points(train_x, "train_x")
    labels = check_labels(train_y, train2d.shape[0])
    check_metric(metric)
    check_tie_break(tie_break)
    resolution = _check_count(resolution, "resolution", 2)
    max_points = _check_count(max_points, "max_points", 1)
    num_train = train2d.shape[0]
    chosen = np.arange(num_train)
    if num_train > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(num_train, max_points, replace=False))
    check_k(k, len(chosen))
    data = np.asarray(train2d)[chosen].astype(np.float64)
    if not np.isfinite(data).all():
        raise ValueError("train_x contains NaN or infinite values; remove or impute them before kNN.")
    mean = data.mean(0)
    centred = data - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    components = np.zeros((2, data.shape[1]))
    components[: min(2, len(vt))] = vt[:2]  # one feature (or one point): the second axis stays zero
    signs = np.sign(components[np.arange(2), np.abs(components).argmax(1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    total = float((singular ** 2).sum())
    variance = np.zeros(2)
    variance[: min(2, len(singular))] = (singular[:2] ** 2) / total if total > 0 else 0.0
    projected = (centred @ components.T).astype(np.float32)
    classes, encoded = encode_labels(labels)
    span = projected.max(0) - projected.min(0)
    margin = np.where(span > 0, 0.05 * span, 1.0)  # a flat axis (one feature) still gets a visible band
    xs, ys, grid_labels, tied = _grid_vote(projected, encoded[chosen], len(classes), k=k, metric=metric,
                                           tie_break=tie_break, resolution=resolution, margin=margin)
    return DecisionRegions(grid_x=xs, grid_y=ys, labels=grid_labels, vote_tied=tied, points=projected,
                           point_labels=encoded[chosen], classes=classes, k=int(k), metric=metric,
                           tie_break=tie_break, num_train=num_train, explained_variance_ratio=variance,
                           mean=mean, components=components)
