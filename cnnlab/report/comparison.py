"""The method comparison: test accuracy against training time, one labelled point per method; the "ran on" text.

Labels are placed so that none overlaps another label, a marker or an error bar: each label tries offsets in
eight directions around its point, nearest ring first, and takes the first whose text box (measured with the
renderer, in pixels) touches nothing drawn so far and stays inside the axes. The order is the order of
``methods``, so the same input always gives the same picture.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas), never pyplot, so nothing global is touched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter
from matplotlib.transforms import Bbox

from cnnlab.report._paths import check_png_path

KINDS = ("classical", "knn", "train")
_COLOURS = {"classical": "tab:green", "knn": "tab:orange", "train": "tab:blue"}
_KIND_NAMES = {"classical": "descriptors + classical classifier", "knn": "kNN", "train": "CNN"}
_MARKER_AREA = 60  # points^2, as scatter's ``s``
_MIN_TIME_S = 1e-3  # a log axis cannot show 0 s: shorter times are drawn at 1 ms (the label keeps the value)

# Label directions (dx, dy), tried in this order: right and left first (a two-line label is wider than tall, so
# those rarely cover a neighbour's marker), then above and below, then the diagonals.
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))
_GAPS_PT = (3.0, 12.0, 24.0, 40.0)  # distance from the marker's edge to the text box, in points


def _check_methods(methods) -> list[dict]:
    if isinstance(methods, Mapping) or isinstance(methods, (str, bytes)) or not methods:
        raise ValueError("methods must be a non-empty list of dicts with 'method', 'kind', 'test_accuracy' and "
                         "'train_time_s'.")
    rows = []
    for index, row in enumerate(methods):
        if not isinstance(row, Mapping):
            raise ValueError(f"methods[{index}] is a {type(row).__name__}, not a dict.")
        missing = [k for k in ("method", "kind", "test_accuracy", "train_time_s") if k not in row]
        if missing:
            raise ValueError(f"methods[{index}] lacks {missing}; each method needs 'method', 'kind', "
                             "'test_accuracy' (a fraction) and 'train_time_s'.")
        name = row["method"]
        if row["kind"] not in KINDS:
            raise ValueError(f"Method {name!r} has kind {row['kind']!r}; use one of {KINDS}.")
        accuracy, seconds = _number(row, "test_accuracy"), _number(row, "train_time_s")
        if not 0 <= accuracy <= 1:
            raise ValueError(f"Method {name!r} has test_accuracy {accuracy}; give it as a fraction in [0, 1].")
        if seconds < 0:
            raise ValueError(f"Method {name!r} has a negative train_time_s ({seconds}).")
        std = None
        if row.get("test_accuracy_std") is not None:
            std = _number(row, "test_accuracy_std")
            if not 0 <= std <= 1:
                raise ValueError(f"Method {name!r} has test_accuracy_std {std}; give it as a fraction in [0, 1].")
        rows.append({"method": str(name), "kind": row["kind"], "accuracy_percent": 100 * accuracy,
                     "train_time_s": seconds, "std_percent": None if std is None else 100 * std})
    return rows


def _number(row: Mapping, key: str) -> float:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Method {row['method']!r} has {key}={value!r}; it must be a finite number.")
    return float(value)


def _label_text(row: Mapping) -> str:
    accuracy = f"{row['accuracy_percent']:.2f}%"
    if row["std_percent"] is not None:
        accuracy += f" \u00b1 {row['std_percent']:.2f}"
    return f"{row['method']}\n{accuracy}"


def _overlap_area(a: Bbox, b: Bbox) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _outside_area(box: Bbox, inside: Bbox) -> float:
    return box.width * box.height - _overlap_area(box, inside)


def comparison_figure(methods: Sequence[Mapping], *, title: str | None = None) -> Figure:
    """The comparison figure (see ``plot_comparison``), for callers that want to draw more on it or save it
    themselves. The labels are the axes' ``texts``, already placed."""
    rows = _check_methods(methods)
    times = [max(r["train_time_s"], _MIN_TIME_S) for r in rows]
    accuracies = [r["accuracy_percent"] for r in rows]

    fig = Figure(figsize=(8, 5.5), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind in KINDS:
        members = [i for i, r in enumerate(rows) if r["kind"] == kind]
        if not members:
            continue
        ax.scatter([times[i] for i in members], [accuracies[i] for i in members], s=_MARKER_AREA,
                   color=_COLOURS[kind], zorder=3, label=_KIND_NAMES[kind])
        with_std = [i for i in members if rows[i]["std_percent"] is not None]
        if with_std:
            ax.errorbar([times[i] for i in with_std], [accuracies[i] for i in with_std],
                        yerr=[rows[i]["std_percent"] for i in with_std], fmt="none", ecolor=_COLOURS[kind],
                        elinewidth=1.2, capsize=4, zorder=2)
    ax.set_xscale("log")
    # Seconds as plain numbers (3, 10, 40) rather than 3 x 10^0; LogFormatter labels minor ticks only on short ranges.
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.6)))
    # Room around the points for the labels: a factor of 4 in time each side, and a margin in accuracy that
    # covers the error bars.
    ax.set_xlim(min(times) / 4, max(times) * 4)
    low = min(a - (r["std_percent"] or 0) for a, r in zip(accuracies, rows))
    high = max(a + (r["std_percent"] or 0) for a, r in zip(accuracies, rows))
    margin = max(1.0, 0.25 * (high - low))
    ax.set_ylim(low - margin, min(high + margin, 100 + margin / 2))
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "test accuracy against training time")
    # The legend sits below the axes, where it cannot cover a point or a label.
    fig.legend(loc="outside lower center", ncols=len({r["kind"] for r in rows}), fontsize=9, frameon=False)

    # Fix the layout before measuring: the label search works in pixels, so the axes must not move afterwards.
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    renderer = canvas.get_renderer()
    _place_labels(ax, rows, times, accuracies, renderer)
    return fig


def _place_labels(ax, rows, times, accuracies, renderer) -> None:
    """Annotates each point with the first candidate offset whose text box is free (see the module docstring)."""
    pixels_per_point = ax.figure.dpi / 72
    radius_pt = math.sqrt(_MARKER_AREA) / 2
    centres = ax.transData.transform(list(zip(times, accuracies)))
    # Obstacles in display pixels: every marker (with a pixel of slack) and every error bar.
    obstacles = []
    radius_px = radius_pt * pixels_per_point + 1
    for x, y in centres:
        obstacles.append(Bbox.from_extents(x - radius_px, y - radius_px, x + radius_px, y + radius_px))
    for row, t, a in zip(rows, times, accuracies):
        if row["std_percent"] is not None:
            (x0, y0), (x1, y1) = ax.transData.transform([(t, a - row["std_percent"]), (t, a + row["std_percent"])])
            cap = 4 * pixels_per_point + 1  # capsize 4 points each side
            obstacles.append(Bbox.from_extents(min(x0, x1) - cap, y0, max(x0, x1) + cap, y1))
    axes_box = ax.get_window_extent(renderer)
    pad_px = 2.0  # keeps texts from touching each other

    for row, t, a in zip(rows, times, accuracies):
        best = None  # (cost, dx, dy, gap): the least overlapping candidate, used if none is free
        for gap in _GAPS_PT:
            for dx, dy in _DIRECTIONS:
                annotation = _annotate(ax, row, t, a, dx, dy, radius_pt + gap)
                box = annotation.get_window_extent(renderer).padded(pad_px)
                annotation.remove()
                cost = sum(_overlap_area(box, o) for o in obstacles) + _outside_area(box, axes_box)
                if best is None or cost < best[0]:
                    best = (cost, dx, dy, gap)
                if cost == 0:
                    break
            if best[0] == 0:
                break
        _, dx, dy, gap = best
        # A label set off further than the first ring gets a thin leader line, so it still reads as its point's.
        annotation = _annotate(ax, row, t, a, dx, dy, radius_pt + gap, leader=gap > _GAPS_PT[0])
        obstacles.append(annotation.get_window_extent(renderer).padded(pad_px))


def _annotate(ax, row, t, a, dx, dy, distance_pt, *, leader=False):
    norm = math.hypot(dx, dy)
    offset = (distance_pt * dx / norm, distance_pt * dy / norm)
    ha = {1: "left", -1: "right", 0: "center"}[dx]
    va = {1: "bottom", -1: "top", 0: "center"}[dy]
    arrowprops = {"arrowstyle": "-", "color": "0.5", "linewidth": 0.6, "shrinkA": 0,
                  "shrinkB": math.sqrt(_MARKER_AREA) / 2} if leader else None
    return ax.annotate(_label_text(row), (t, a), textcoords="offset points", xytext=offset, ha=ha, va=va,
                       fontsize=9, zorder=4, arrowprops=arrowprops)


def plot_comparison(methods: Sequence[Mapping], out_png: str | os.PathLike, *, title: str | None = None) -> str:
    """Test accuracy (%) against training time (s, log scale), one labelled point per method; returns the path.

    ``methods``: dicts with "method" (name), "kind" ("classical", "knn" or "train"), "test_accuracy" (a
    fraction), "train_time_s" (seconds) and optionally "test_accuracy_std" (a fraction, drawn as an error bar
    and given in the label). Labels never overlap each other, a marker or an error bar while there is room
    anywhere within the search distance. Raises ValueError on a missing key, an unknown kind or a value out
    of range.
    """
    out_png = check_png_path(out_png)
    comparison_figure(methods, title=title).savefig(out_png)
    return out_png


def accuracy_error_bars_figure(methods: Sequence[Mapping], *, title: str | None = None) -> Figure:
    """The figure of ``plot_accuracy_error_bars``, not yet saved."""
    import numpy as np

    from cnnlab.report import stats

    if isinstance(methods, Mapping) or not methods:
        raise ValueError("methods must be a non-empty list of {'method': name, 'accuracies': [per-seed values]}.")
    rows = []
    for row in methods:
        values = np.asarray(row.get("accuracies", ()), dtype=np.float64)
        if "method" not in row or values.ndim != 1 or values.size == 0:
            raise ValueError(f"Each method needs a name and a non-empty list 'accuracies', got {dict(row)!r}.")
        if not ((values >= 0) & (values <= 1)).all():
            raise ValueError(f"{row['method']}: accuracies must be fractions in [0, 1], got {values.tolist()}.")
        rows.append((str(row["method"]), 100 * values, stats.summarize(values)))
    fig = Figure(figsize=(max(4.0, 1.3 * len(rows) + 2.0), 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for position, (name, values, summary) in enumerate(rows):
        # The seeds' own values, spread sideways a little so equal values stay visible as several dots.
        offsets = np.linspace(-0.12, 0.12, values.size) if values.size > 1 else np.zeros(1)
        ax.scatter(position + offsets, values, s=14, color="tab:gray", alpha=0.7, zorder=2,
                   label="one seed" if position == 0 else None)
        mean = 100 * summary.mean
        if summary.ci_low is not None and not summary.deterministic:
            ax.errorbar(position + 0.3, mean, yerr=[[mean - 100 * summary.ci_low], [100 * summary.ci_high - mean]],
                        fmt="o", color="tab:blue", capsize=4, zorder=3,
                        label=f"mean, {round(100 * summary.confidence)}% CI (t)" if position == 0 else None)
            ax.errorbar(position + 0.3, mean, yerr=100 * summary.std, fmt="none", color="tab:blue", alpha=0.35,
                        linewidth=6, zorder=2, label="+/- 1 std" if position == 0 else None)
        else:
            ax.plot(position + 0.3, mean, "o", color="tab:blue", zorder=3)
        note = "no spread (deterministic)" if summary.deterministic else f"{mean:.2f} +/- {100 * summary.std:.2f}"
        ax.annotate(f"{note}\nn={summary.n}", (position + 0.3, mean), xytext=(8, 0), textcoords="offset points",
                    fontsize=7.5, va="center")
    ax.set_xticks(range(len(rows)), [name for name, _, _ in rows])
    ax.set_xlim(-0.6, len(rows) - 0.1 + 0.6)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or "test accuracy over seeds")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def plot_accuracy_error_bars(methods: Sequence[Mapping], out_png: str | os.PathLike, *,
                             title: str | None = None) -> str:
    """Test accuracy per method over seeds: each seed's value as a dot, the mean with its 95% Student-t interval
    (error bar) and +/- 1 standard deviation (a wide faint bar); a method whose seeds all agree is marked "no
    spread (deterministic)". ``methods``: [{"method": name, "accuracies": [fractions, one per seed]}, ...].
    Returns the PNG's path."""
    out_png = check_png_path(out_png)
    accuracy_error_bars_figure(methods, title=title).savefig(out_png)
    return out_png
