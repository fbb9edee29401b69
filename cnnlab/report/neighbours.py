"""Pictures of k-nearest neighbours: nearest training images, 2-D decision regions, cross-validation curves.

    plot_neighbours(query_images, query_labels, neighbour_images, neighbour_labels, "neighbours.png")
    points, labels = toy_2d_dataset(seed=0)
    plot_decision_regions(points, labels, "regions.png", ks=(1, 5), metrics=("l1", "l2"))
    plot_cv_accuracy(cv, "cv.png")        # cv: knn.CrossValidation or its to_dict()

All functions write a PNG with matplotlib's Agg canvas (no display needed) and return its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from cnnlab import knn

_CORRECT, _WRONG = "#1a9850", "#d73027"
_REGION_COLOURS = ["#8dd3c7", "#fdb462", "#bebada", "#fb8072", "#80b1d3", "#b3de69", "#fccde5", "#bc80bd"]
_POINT_COLOURS = ["#1b7a6e", "#c96d00", "#5e52a6", "#c0271b", "#2c6d9c", "#5c8c1a", "#c2468f", "#6b2d6e"]


def _save(fig: Figure, out_png: str) -> str:
    directory = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(directory, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out_png, dpi=110)
    return out_png


def _as_display(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return image, "gray"
    if image.ndim == 3 and image.shape[-1] == 3:
        return image, None
    raise ValueError(f"images must be [H, W], [H, W, 1] or [H, W, 3], got shape {image.shape}.")


def plot_neighbours(
    query_images,
    query_labels,
    neighbour_images,
    neighbour_labels,
    out_png: str,
    *,
    class_names: Sequence[str] | None = None,
    distances=None,
    title: str | None = None,
) -> str:
    """One row per query: the query image, then its nearest training images, nearest first, each framed green
    when its label equals the query's true label and red when not (the lecture's picture).

    query_images [Q, H, W(, C)], query_labels [Q] ints, neighbour_images [Q, K, H, W(, C)], neighbour_labels
    [Q, K] ints, distances [Q, K] (optional, written under each neighbour).
    """
    query_images = np.asarray(query_images)
    neighbour_images = np.asarray(neighbour_images)
    query_labels = np.asarray(query_labels)
    neighbour_labels = np.asarray(neighbour_labels)
    if neighbour_images.ndim < 3 or neighbour_images.shape[0] != query_images.shape[0]:
        raise ValueError(f"neighbour_images must be [Q, K, H, W(, C)] with Q={query_images.shape[0]}, got "
                         f"{neighbour_images.shape}.")
    num_q, num_k = neighbour_images.shape[:2]
    if query_labels.shape != (num_q,) or neighbour_labels.shape != (num_q, num_k):
        raise ValueError(f"labels must be [Q]={num_q} and [Q, K]=({num_q}, {num_k}); got {query_labels.shape} "
                         f"and {neighbour_labels.shape}.")

    def name(label) -> str:
        return str(class_names[int(label)]) if class_names is not None else str(int(label))

    fig = Figure(figsize=(1.15 * (num_k + 1) + 0.4, 1.35 * num_q + 0.6))
    axes = fig.subplots(num_q, num_k + 1, squeeze=False)
    for row in range(num_q):
        image, cmap = _as_display(query_images[row])
        ax = axes[row, 0]
        ax.imshow(image, cmap=cmap, vmin=0, vmax=255 if image.dtype == np.uint8 else None)
        ax.set_title(f"query\n{name(query_labels[row])}", fontsize=7)
        for col in range(num_k):
            image, cmap = _as_display(neighbour_images[row, col])
            ax = axes[row, col + 1]
            ax.imshow(image, cmap=cmap, vmin=0, vmax=255 if image.dtype == np.uint8 else None)
            correct = neighbour_labels[row, col] == query_labels[row]
            colour = _CORRECT if correct else _WRONG
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            label = ("ok " if correct else "x ") + name(neighbour_labels[row, col])
            if distances is not None:
                label += f"\nd={float(np.asarray(distances)[row, col]):.4g}"
            ax.set_title(label, fontsize=6, color=colour)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "Nearest training images (green: same label as the query, red: different)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)


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


def decision_grid(points, labels, *, k: int, metric: str, resolution: int = 160, tie_break: str = "nearest"):
    """kNN labels over a regular grid covering the points. Returns (xs [R], ys [R], predicted [R, R],
    tied [R, R] bool: the vote had more than one class with the top count)."""
    points = np.asarray(points)
    labels = np.asarray(labels)
    low, high = points.min(0), points.max(0)
    margin = 0.08 * (high - low + 1)
    xs = np.linspace(low[0] - margin[0], high[0] + margin[0], resolution)
    ys = np.linspace(low[1] - margin[1], high[1] + margin[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)
    classes, encoded = np.unique(labels, return_inverse=True)
    _, idx = knn.nearest(points.astype(np.float32), grid, k=k, metric=metric)
    neighbour_labels = encoded[np.asarray(idx)]
    counts = np.stack([(neighbour_labels == c).sum(1) for c in range(len(classes))], 1)
    tied = (counts == counts.max(1, keepdims=True)).sum(1) > 1
    predicted = np.asarray(knn.vote(neighbour_labels, len(classes), tie_break=tie_break))
    return xs, ys, predicted.reshape(resolution, resolution), tied.reshape(resolution, resolution)


def plot_decision_regions(
    points,
    labels,
    out_png: str,
    *,
    ks: Sequence[int] = (1, 5),
    metrics: Sequence[str] = ("l1", "l2"),
    resolution: int = 160,
) -> str:
    """Decision regions of kNN on 2-D points, one panel per (metric, k); grid points whose vote is tied are
    white. points [N, 2], labels [N] ints (at most 8 classes)."""
    points = np.asarray(points)
    labels = np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [N, 2] for a 2-D picture, got shape {points.shape}.")
    classes, encoded = np.unique(labels, return_inverse=True)
    if len(classes) > len(_REGION_COLOURS):
        raise ValueError(f"at most {len(_REGION_COLOURS)} classes can be coloured, got {len(classes)}.")
    cmap = ListedColormap(["#ffffff"] + _REGION_COLOURS[: len(classes)])
    fig = Figure(figsize=(4.2 * len(ks), 4.0 * len(metrics)))
    axes = fig.subplots(len(metrics), len(ks), squeeze=False)
    for m, metric in enumerate(metrics):
        for j, k in enumerate(ks):
            xs, ys, predicted, tied = decision_grid(points, labels, k=k, metric=metric, resolution=resolution)
            shade = np.where(tied, 0, predicted + 1)
            ax = axes[m, j]
            ax.pcolormesh(xs, ys, shade, cmap=cmap, vmin=0, vmax=len(classes), shading="auto")
            for c in range(len(classes)):
                sel = encoded == c
                ax.scatter(points[sel, 0], points[sel, 1], s=16, c=_POINT_COLOURS[c], edgecolors="k",
                           linewidths=0.5, label=f"class {classes[c]}")
            ax.set_title(f"{metric.upper()}, k={k}  (white: tied vote, {100 * tied.mean():.1f}% of the plane)",
                         fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle("kNN decision regions on a 2-D toy data set", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_cv_accuracy(cv, out_png: str, *, title: str | None = None) -> str:
    """Cross-validation accuracy against k, one line per metric: mean over folds with +-1 std error bars, the
    best (k, metric) circled. ``cv``: a ``knn.CrossValidation`` or its ``to_dict()``."""
    summary = cv.to_dict() if hasattr(cv, "to_dict") else dict(cv)
    ks = np.asarray(summary["ks"])
    mean, std = np.asarray(summary["mean"]), np.asarray(summary["std"])
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.subplots()
    for m, metric in enumerate(summary["metrics"]):
        ax.errorbar(ks, mean[:, m], yerr=std[:, m], marker="o", capsize=3, label=metric.upper())
    best = summary["best"]
    ax.scatter([best["k"]], [best["mean_accuracy"]], s=180, facecolors="none", edgecolors="k",
               label=f"best: {best['metric'].upper()}, k={best['k']} ({best['mean_accuracy']:.4f})")
    ax.set_xlabel("k (neighbours)")
    ax.set_ylabel(f"accuracy ({summary['folds']}-fold cross-validation)")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Cross-validated kNN accuracy (mean +- std over folds)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)
