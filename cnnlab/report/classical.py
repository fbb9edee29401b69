"""Figures and the markdown report of the classical pipeline: arrays in, files out.

    plot_descriptor_distributions(features, labels, names, class_names, "descriptors.png")  # per-class box plots
    plot_validation_scores(rows, "pipelines.png")          # every pipeline's validation/test accuracy, chosen marked
    plot_textures(textures, table, "textures.png")         # the lecture's illustration on synthetic textures
    classical_markdown(results, figures)                   # results.md from a results.json record

The confusion matrix of the chosen pipeline is ``cnnlab.report.confusion.plot_confusion``. Everything draws on a
``matplotlib.figure.Figure`` with an Agg canvas: no pyplot, no global backend.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.feature_selection import f_classif

from cnnlab.report._paths import check_png_path


def _save(figure: Figure, out_png: str, dpi: int = 110) -> str:
    FigureCanvasAgg(figure)
    figure.savefig(out_png, dpi=dpi)
    return out_png


# --------------------------------------------------------------------------------------------- descriptors


def discriminative_order(features, labels) -> tuple[np.ndarray, np.ndarray]:
    """Columns of ``features`` [N, D] ordered by their one-way ANOVA F-score across ``labels`` [N], highest first.

    Returns ``(order [D] int, f_scores [D] float64)``. Non-finite entries (undefined descriptors) are replaced by
    the column median for the ranking only; a column constant within every class, or with no finite value,
    scores 0 (it separates nothing).
    """
    features = np.asarray(features, np.float64)
    finite = np.isfinite(features)
    medians = np.array([np.median(column[ok]) if ok.any() else 0.0 for column, ok in zip(features.T, finite.T)])
    filled = np.where(finite, features, medians)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Features .* are constant", category=UserWarning)  # scored 0 below
        scores, _ = f_classif(filled, np.asarray(labels))
    scores = np.where(np.isfinite(scores), scores, 0.0)
    return np.argsort(-scores, kind="stable"), scores


def plot_descriptor_distributions(features, labels, names: Sequence[str], class_names: Sequence[str],
                                  out_png: str | os.PathLike, max_descriptors: int = 12) -> str:
    """Per-class box plots of the ``max_descriptors`` descriptors that separate the classes best.

    Args:
      features: [N, D] descriptor values (NaN/inf allowed: each box uses the finite values of its class).
      labels: [N] integer class ids in [0, C).
      names: D descriptor names; class_names: C names in class-id order.
      out_png: the PNG to write.
    Returns:
      The PNG path. Panels are ordered by ANOVA F-score (``discriminative_order``), which each title shows.
    """
    out_png = check_png_path(out_png)
    features, labels = np.asarray(features, np.float64), np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels) or features.shape[1] != len(names):
        raise ValueError(f"features must be [N, D] with N = len(labels) and D = len(names); got {features.shape}, "
                         f"{len(labels)} labels, {len(names)} names.")
    if len(labels) == 0:
        raise ValueError("plot_descriptor_distributions needs at least one image.")
    order, scores = discriminative_order(features, labels)
    shown = order[:max(1, min(max_descriptors, features.shape[1]))]
    columns = min(4, len(shown))
    rows = -(-len(shown) // columns)
    class_ids = np.arange(len(class_names))
    short = [str(n) if len(str(n)) <= 8 else str(n)[:7] + "." for n in class_names]
    rotate = max(len(s) for s in short) > 2
    colours = [f"C{i % 10}" for i in class_ids]
    # Fixed margins in inches rather than constrained layout: 12 panels of 10 boxes took seconds to lay out.
    panel_w, panel_h, top, bottom, gap = 3.6, 2.3, 0.75, 0.55 + (0.45 if rotate else 0.0), 0.55 + (0.45 if rotate
                                                                                                   else 0.0)
    width, height = panel_w * columns + 0.6, panel_h * rows + gap * (rows - 1) + top + bottom
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=0.45 / width, right=1 - 0.15 / width, top=1 - top / height, bottom=bottom / height,
                           wspace=0.28, hspace=gap / panel_h)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    for axis, column in zip(axes, shown):
        values = features[:, column]
        groups = [values[(labels == c) & np.isfinite(values)] for c in class_ids]
        filled = [g if len(g) else np.array([np.nan]) for g in groups]
        boxes = axis.boxplot(filled, tick_labels=short, patch_artist=True, widths=0.65, showfliers=True,
                             flierprops={"markersize": 2, "alpha": 0.4}, medianprops={"color": "black"})
        for patch, colour in zip(boxes["boxes"], colours):
            patch.set_facecolor(colour)
            patch.set_alpha(0.55)
        axis.set_title(f"{names[column]}  (F = {scores[column]:.0f})", fontsize=10)
        axis.tick_params(axis="x", labelsize=8, rotation=90 if rotate else 0)
        axis.tick_params(axis="y", labelsize=8)
        axis.grid(axis="y", alpha=0.3)
    for axis in axes[len(shown):]:
        axis.set_visible(False)
    figure.suptitle(f"The {len(shown)} descriptors that separate the classes best (ANOVA F-score), one box per "
                    f"class (quartiles, median line), {len(labels):,} images", fontsize=11, y=1 - 0.2 / height)
    figure.supxlabel("class", fontsize=10, y=0.1 / height)
    return _save(figure, out_png)


# --------------------------------------------------------------------------------------------- pipelines


def plot_validation_scores(rows: Sequence[Mapping], out_png: str | os.PathLike, *,
                           chosen_method: str | None = None, validation_count: int | None = None,
                           test_count: int | None = None) -> str:
    """Every pipeline's validation accuracy (filled dot) and test accuracy (open diamond), sorted, chosen marked.

    Args:
      rows: one mapping per pipeline with "method" (e.g. "svm/pixels"), "validation_accuracy" and
        "test_accuracy" (fractions).
      chosen_method: the pipeline model selection picked; default the first row with the highest validation
        accuracy (the job's rule).
      validation_count, test_count: images in each split, shown in the legend when given.
    Returns:
      The PNG path.
    """
    out_png = check_png_path(out_png)
    if not rows:
        raise ValueError("plot_validation_scores needs at least one pipeline row.")
    if chosen_method is None:
        chosen_method = max(rows, key=lambda r: r["validation_accuracy"])["method"]
    if chosen_method not in {r["method"] for r in rows}:
        raise ValueError(f"chosen_method {chosen_method!r} is not one of the rows' methods.")
    ordered = sorted(rows, key=lambda r: r["validation_accuracy"])        # best at the top of the plot
    positions = np.arange(len(ordered))
    validation = np.array([r["validation_accuracy"] for r in ordered])
    test = np.array([r["test_accuracy"] for r in ordered])
    figure = Figure(figsize=(7.5, 0.32 * len(ordered) + 1.6), layout="constrained")   # one panel: cheap
    axis = figure.subplots()
    axis.hlines(positions, np.minimum(validation, test), np.maximum(validation, test), color="0.75", lw=1)
    images = {name: f", {count:,} images" if count else "" for name, count in
              (("validation", validation_count), ("test", test_count))}
    axis.plot(validation, positions, "o", color="C0", label=f"validation (used to choose{images['validation']})")
    axis.plot(test, positions, "D", mfc="none", color="C3", label=f"test (reported only{images['test']})")
    labels = [r["method"].replace("/", " on ") for r in ordered]
    axis.set_yticks(positions, labels, fontsize=9)
    for tick, row in zip(axis.get_yticklabels(), ordered):
        if row["method"] == chosen_method:
            tick.set_fontweight("bold")
    chosen_at = next(i for i, r in enumerate(ordered) if r["method"] == chosen_method)
    axis.axhspan(chosen_at - 0.45, chosen_at + 0.45, color="gold", alpha=0.35, lw=0, label="chosen")
    low = float(min(validation.min(), test.min()))
    axis.set_xlim(max(0.0, low - 0.05), 1.005)
    axis.set_ylim(-0.7, len(ordered) - 0.3)
    axis.set_xlabel("accuracy")
    axis.grid(axis="x", alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title("Classical pipelines: chosen on validation accuracy, then tested", fontsize=11)
    return _save(figure, out_png)


# --------------------------------------------------------------------------------------------- textures


def plot_textures(textures: Mapping[str, np.ndarray], table: Mapping[str, Mapping[str, float]],
                  out_png: str | os.PathLike) -> str:
    """The lecture's illustration: synthetic textures (uint8 [H, W] each) with their G&W statistics below."""
    out_png = check_png_path(out_png)
    figure = Figure(figsize=(3.4 * len(textures), 4.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(textures)))
    for axis, (name, image) in zip(axes, textures.items()):
        stats = table[name]
        axis.imshow(image, cmap="gray", vmin=0, vmax=255)
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel(f"mean {stats['mean']:.1f}  std {stats['std']:.2f}\nR {stats['smoothness']:.4f}  "
                        f"mu3 {stats['third_moment']:.3f}\nU {stats['uniformity']:.4f}  e {stats['entropy']:.2f} bits",
                        fontsize=9)
    figure.suptitle("Lecture illustration (synthetic textures, not the dataset):\nGonzalez & Woods statistics",
                    fontsize=11)
    return _save(figure, out_png, dpi=100)


def texture_markdown(table: Mapping[str, Mapping[str, float]]) -> str:
    """The texture table as markdown, one row per texture."""
    lines = ["| texture | mean | std | R (smoothness) | third moment | uniformity | entropy (bits) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in table.items():
        lines.append(f"| {name} | {s['mean']:.2f} | {s['std']:.2f} | {s['smoothness']:.4f} | "
                     f"{s['third_moment']:.4f} | {s['uniformity']:.4f} | {s['entropy']:.3f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- report


def classical_markdown(results: Mapping, figures: Mapping[str, str], machine_text: str = "") -> str:
    """results.md of a classical job from its results.json record; ``figures`` maps a key ("descriptors",
    "pipelines", "confusion", "textures") to a file name relative to the report."""
    details, chosen, timing = results["details"], results["chosen"], results["timing"]
    splits = results["splits"]
    lines = [f"# Classical pipeline on {results['dataset']}", "",
             f"Chosen on validation: **{results['chosen_text']}** (validation accuracy "
             f"{chosen['validation_accuracy']:.4f}); test accuracy **{results['test']['accuracy']:.4f}** on "
             f"{splits['test']} test images.", "",
             f"Every pipeline was fitted on {splits['train']} training images and scored on {splits['validation']} "
             f"held-out training images (validation); the test split only reports what was chosen. Descriptors "
             f"under {details['connectivity']}-adjacency took {details['descriptor_s_per_1000_images']:.3f} s per "
             f"1000 images (after {timing['compile_s']:.1f} s of compilation). Chosen pipeline: training "
             f"{timing['train_s']:.2f} s (descriptors of the training images + fit), inference "
             f"{timing['inference_s_per_1000']:.3f} s per 1000 images, {results['model']['bytes']:,} bytes pickled; "
             f"job wall time {timing['wall_s']:.1f} s.", ""]
    if machine_text:
        lines += [f"Machine: {machine_text}.", ""]
    if "pipelines" in figures:
        lines += [f"![validation and test accuracy of every pipeline]({figures['pipelines']})", ""]
    lines += ["| classifier | features (D) | validation accuracy | test accuracy | train accuracy | fit time (s) | "
              "inference s/1000 |",
              "|---|---|---|---|---|---|---|"]
    for r in details["classifiers"]:
        mark = " (chosen)" if r["method"] == chosen["method"] else ""
        lines.append(f"| {r['classifier']}{mark} | {r['features']} ({r['num_features']}) | "
                     f"{r['validation_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
                     f"{r['train_accuracy']:.4f} | {r['train_time_s']:.2f} | {r['inference_s_per_1000']:.3f} |")
    if "confusion" in figures:
        lines += ["", "Confusion matrix of the chosen pipeline on the test split:", "",
                  f"![confusion matrix]({figures['confusion']})"]
    if "descriptors" in figures:
        lines += ["", "The descriptors that separate the classes best (ANOVA F-score), per class, on the training "
                  "images:", "", f"![descriptor distributions]({figures['descriptors']})"]
    if details.get("clustering"):
        lines += ["", "KMeans (k = number of classes) on the training subset:", "",
                  "| features | adjusted Rand index | purity |", "|---|---|---|"]
        for c in details["clustering"]:
            lines.append(f"| {c['features']} | {c['adjusted_rand_index']:.4f} | {c['purity']:.4f} |")
    lines += ["", "Lecture illustration, unrelated to the dataset: Gonzalez & Woods statistics of three synthetic "
              "textures.", ""]
    if "textures" in figures:
        lines += [f"![synthetic textures]({figures['textures']})", ""]
    lines += [texture_markdown(details["textures"]), ""]
    return "\n".join(lines)
