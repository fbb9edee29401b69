"""Confusion matrices: computing them from labels, row normalisation, per-class accuracy, and the plot.

Convention: ``matrix[i, j]`` counts test examples of true class ``i`` predicted as class ``j`` (rows: true,
columns: predicted), so the row-normalised matrix's diagonal is the per-class accuracy (recall).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab.report._paths import check_png_path

# Above this many classes the cells are too small for numbers and per-class tick labels.
_MAX_ANNOTATED_CLASSES = 20
_MAX_LABELLED_CLASSES = 40


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """Counts ``[num_classes, num_classes]`` int64 from true ``labels`` [N] and ``predictions`` [N] (ints)."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(f"labels and predictions must be 1-D of equal length; got shapes {labels.shape} and "
                         f"{predictions.shape}.")
    if not (np.issubdtype(labels.dtype, np.integer) and np.issubdtype(predictions.dtype, np.integer)):
        raise TypeError(f"labels and predictions must be integer class ids; got {labels.dtype}, {predictions.dtype}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    for name, ids in (("labels", labels), ("predictions", predictions)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}); found range [{ids.min()}, {ids.max()}].")
    flat = labels.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _check_matrix(matrix) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"A confusion matrix must be square [C, C] with C >= 1; got shape {matrix.shape}.")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise TypeError(f"A confusion matrix holds real counts; got dtype {matrix.dtype}.")
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise ValueError("A confusion matrix holds finite, non-negative counts; this one has negative or non-finite "
                         "entries.")
    return matrix


def row_normalize(matrix) -> np.ndarray:
    """Each row divided by its sum (float64); rows with no examples stay all zero."""
    matrix = _check_matrix(matrix).astype(np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def per_class_accuracy(matrix) -> np.ndarray:
    """Diagonal over row sums: the fraction of each true class predicted correctly [C]; NaN for empty classes."""
    matrix = _check_matrix(matrix).astype(np.float64)
    totals = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), totals, out=np.full(len(totals), np.nan), where=totals > 0)


def plot_confusion(matrix, class_names: Sequence[str], out_png: str | os.PathLike, *,
                   title: str | None = None) -> str:
    """Draws the counts (left) and the row-normalised matrix (right) with class names on both axes.

    Args:
      matrix: [C, C] non-negative counts, rows true classes, columns predicted classes.
      class_names: C names, in class-id order.
      out_png: where to write the PNG (parent directories are created).
    Returns:
      The PNG path.
    """
    out_png = check_png_path(out_png)
    matrix = _check_matrix(matrix)
    class_names = [str(n) for n in class_names]
    num_classes = matrix.shape[0]
    if len(class_names) != num_classes:
        raise ValueError(f"Got {len(class_names)} class names for a {num_classes}x{num_classes} matrix; pass one "
                         "name per class.")
    normalized = row_normalize(matrix)
    total = matrix.sum()
    accuracy = np.trace(matrix) / total if total > 0 else float("nan")

    side = float(np.clip(0.42 * num_classes + 2.5, 5.0, 10.0))
    fig = Figure(figsize=(2 * side + 1.5, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    annotate = num_classes <= _MAX_ANNOTATED_CLASSES
    label_ticks = num_classes <= _MAX_LABELLED_CLASSES
    is_integer = np.all(matrix == np.round(matrix))
    for ax, values, name in zip(fig.subplots(1, 2), (matrix, normalized), ("counts", "row-normalised")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if values is normalized else None,
                          interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(name)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if label_ticks:
            ticks = np.arange(num_classes)
            ax.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=8)
            ax.set_yticks(ticks, class_names, fontsize=8)
        if annotate:
            peak = values.max() if values.max() > 0 else 1.0
            for i in range(num_classes):
                for j in range(num_classes):
                    v = values[i, j]
                    if values is normalized:
                        text = f"{v:.2f}" if v > 0 else "0"
                    else:
                        text = f"{int(v)}" if is_integer else f"{v:.1f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 * peak else "black")
    heading = f"accuracy {100 * accuracy:.2f}% on {int(total) if is_integer else total} examples"
    fig.suptitle(f"{title}: {heading}" if title else heading)
    fig.savefig(out_png)
    return out_png
