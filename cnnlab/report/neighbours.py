"""Pictures of k-nearest neighbours: nearest training images, decision regions, cross-validation curves.

    plot_neighbours(query_images, query_labels, neighbour_images, neighbour_labels, "neighbours.png")
    regions = knn.decision_regions(train_x, train_y, k=5, metric="l1", tie_break="nearest")
    plot_decision_regions(regions, "regions.png", class_names=names)      # the run's data, PCA plane
    points, labels = knn.toy_2d_dataset(seed=0)
    panels = [knn.decision_grid(points, labels, k=k, metric=m) for m in ("l1", "l2") for k in (1, 5)]
    plot_toy_decision_regions(panels, "regions_toy.png")                  # the lecture's toy picture
    plot_cv_accuracy(cv, "cv.png")        # cv: knn.CrossValidation or its to_dict()

Arrays in, files out: the computations live in cnnlab.knn. All functions write a PNG with matplotlib's Agg
canvas (no display needed) and return its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

_CORRECT, _WRONG = "#1a9850", "#d73027"


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


def _class_colours(num_classes: int) -> tuple[list, list]:
    """(light region colours, dark point colours) for up to 20 classes: matplotlib's paired tab20 palette,
    then the lightest/darkest shades of tab20b and tab20c."""
    if num_classes > 20:
        raise ValueError(f"at most 20 classes can be coloured apart, got {num_classes}; plot a subset of the classes.")
    tab20 = colormaps["tab20"].colors
    light, dark = list(tab20[1::2]), list(tab20[0::2])
    for name in ("tab20b", "tab20c"):
        shades = colormaps[name].colors
        light += list(shades[3::4])
        dark += list(shades[0::4])
    return light[:num_classes], dark[:num_classes]


def _class_name(regions, index: int, class_names) -> str:
    label = regions.classes[index]
    return str(class_names[int(label)]) if class_names is not None else str(label)


def _draw_regions(ax, regions, *, class_names=None, point_size: float = 16, shade_ties: bool = False) -> list:
    """Region colours (white: UNDECIDED, or a tied vote when shade_ties) and the points over them; returns the
    legend handles (one per class)."""
    num_classes = len(regions.classes)
    light, dark = _class_colours(num_classes)
    shade = regions.labels + 1  # 0: undecided
    if shade_ties:
        shade = np.where(regions.vote_tied, 0, shade)
    cmap = ListedColormap(["#ffffff"] + light)
    ax.pcolormesh(regions.grid_x, regions.grid_y, shade, cmap=cmap, vmin=-0.5, vmax=num_classes + 0.5,
                  shading="auto", rasterized=True)
    handles = []
    for c in range(num_classes):
        chosen = regions.point_labels == c
        handles.append(ax.scatter(regions.points[chosen, 0], regions.points[chosen, 1], s=point_size, color=dark[c],
                                  edgecolors="k", linewidths=0.3, label=_class_name(regions, c, class_names)))
    ax.set_xlim(regions.grid_x[0], regions.grid_x[-1])
    ax.set_ylim(regions.grid_y[0], regions.grid_y[-1])
    return handles


def plot_decision_regions(regions, out_png: str, *, class_names: Sequence[str] | None = None,
                          title: str | None = None) -> str:
    """One panel: the kNN decision regions of ``regions`` (a ``knn.DecisionRegions``, e.g. from
    ``knn.decision_regions``: kNN in the plane of the training set's first two principal components), the
    (projected) training points coloured by class on top, a legend of the classes beside the panel.

    class_names: names indexed by the training labels (e.g. a data set's class_names); default the labels.
    Axis labels give each principal component's share of the variance when ``regions`` is a PCA projection.
    """
    fig = Figure(figsize=(8.6, 6.2))
    ax = fig.subplots()
    point_size = 9 if len(regions.points) > 500 else 16
    handles = _draw_regions(ax, regions, class_names=class_names, point_size=point_size)
    if regions.explained_variance_ratio is not None:
        ratio = 100 * np.asarray(regions.explained_variance_ratio)
        ax.set_xlabel(f"PC 1 ({ratio[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC 2 ({ratio[1]:.1f}% of variance)")
    else:
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    ax.legend(handles=handles, title="class", fontsize=8, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, markerscale=1.5)
    decided = 100 * float(np.mean(regions.vote_tied))
    subtitle = (f"{regions.metric.upper()}, k={regions.k}; tied votes ({decided:.1f}% of the grid) decided by "
                f"'{regions.tie_break}'; {len(regions.points)} of {regions.num_train} training points")
    plane = "in the plane of the first two principal components" if regions.explained_variance_ratio is not None \
        else "in 2-D"
    ax.set_title((title or f"kNN decision regions {plane}") + "\n" + subtitle, fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_toy_decision_regions(panels: Sequence, out_png: str, *, title: str | None = None) -> str:
    """The lecture's picture: kNN decision regions on toy 2-D points, one panel per ``knn.DecisionRegions`` in
    ``panels`` (e.g. ``knn.decision_grid`` of ``knn.toy_2d_dataset()`` for k = 1, 5 and L1, L2), up to 2 per
    row; grid points whose vote was tied are white. Labelled "lecture illustration: toy 2-D data" so it is not
    mistaken for a picture of the experiment's data."""
    panels = list(panels)
    if not panels:
        raise ValueError("panels is empty; give at least one knn.DecisionRegions (e.g. from knn.decision_grid).")
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.3 * columns + 1.4, 4.0 * rows + 0.5))
    axes = fig.subplots(rows, columns, squeeze=False)
    handles = []
    for ax, regions in zip(axes.flat, panels):
        handles = _draw_regions(ax, regions, shade_ties=True)
        ax.set_title(f"{regions.metric.upper()}, k={regions.k}  (white: tied vote, "
                     f"{100 * regions.vote_tied.mean():.1f}% of the plane)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.legend(handles=handles, labels=[f"class {c}" for c in panels[0].classes], fontsize=8, loc="upper right")
    fig.suptitle(title or "kNN decision regions -- lecture illustration: toy 2-D data", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 1))
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
