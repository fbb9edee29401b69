"""Loss and accuracy curves (train and eval) from a run's ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per log point, each with an integer ``"step"``. Training log points carry
e.g. ``"train_loss"``, ``"train_accuracy"``; evaluations carry ``"eval_loss"``, ``"eval_accuracy"`` (and maybe
``"eval_top5_accuracy"``, ``"epoch"``...). Every scalar key ending in ``loss`` is drawn on the loss panel, every
scalar key ending in ``accuracy`` on the accuracy panel (top-5 and other top-k on a panel of their own), against
the step. ``plot_curve_band`` draws one metric's mean and spread over several seeds.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas), never pyplot, so nothing global is touched.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cnnlab.report._paths import check_png_path

_KINDS = ("loss", "accuracy")


def read_metrics(metrics_jsonl_path: str | os.PathLike) -> list[dict]:
    """Reads ``metrics.jsonl``: returns its records (dicts, each with an int ``"step"``) in file order.

    Raises FileNotFoundError if the file is missing, ValueError if it is empty, a line is not a JSON object, or a
    record has no integer ``"step"``. Blank lines are skipped.
    """
    path = os.fspath(metrics_jsonl_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No metrics file at {path!r}; pass the metrics.jsonl written by a training run.")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number} is not valid JSON ({e}); each line must be one JSON object.") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number} holds a {type(record).__name__}, not a JSON object.")
            step = record.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step):
                raise ValueError(f"{path}:{line_number} has no integer 'step' (got {step!r}); every record needs one.")
            records.append(record)
    if not records:
        raise ValueError(f"Metrics file {path!r} is empty: there is nothing to plot yet (did training log anything?).")
    return records


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record_kind(record: Mapping) -> str:
    """"eval" for an evaluation record (one with an ``eval_*`` key), else "train"."""
    return "eval" if any(key.startswith("eval_") for key in record) else "train"


def latest_records(records: Sequence[dict]) -> list[dict]:
    """The records ordered by step, keeping only the last record for each (step, kind).

    A run resumed from a checkpoint logs the steps after that checkpoint again, and a file appended to by two
    runs can hold steps out of order: the later record for a (step, kind) replaces the earlier one whole (kind:
    see ``record_kind``, so the train and the eval record of one step both stay). Ties keep file order.
    """
    last: dict[tuple[int, str], tuple[int, dict]] = {}
    for position, record in enumerate(records):
        last[(int(record["step"]), record_kind(record))] = (position, record)
    return [record for (step, _), (position, record) in sorted(last.items(), key=lambda kv: (kv[0][0], kv[1][0]))]


def metric_series(records: Sequence[dict], kind: str) -> dict[str, tuple[list[int], list[float]]]:
    """Collects the series of one ``kind`` ("loss" or "accuracy") from metrics records.

    Returns ``{key: (steps, values)}`` for every key that ends with ``kind`` and has a scalar value in some
    record, in the order keys first appear; points are sorted by step, one per step (``latest_records``: the last
    record for a (step, kind) wins).
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown metric kind {kind!r}; use one of {_KINDS}.")
    by_key: dict[str, dict[int, float]] = {}
    for record in records:  # first pass fixes the key order (order of first appearance in the file)
        for key, value in record.items():
            if key.endswith(kind) and _is_scalar(value):
                by_key.setdefault(key, {})
    for record in latest_records(records):
        for key, value in record.items():
            if key in by_key and _is_scalar(value):
                by_key[key][int(record["step"])] = float(value)
    series = {}
    for key, points in by_key.items():
        steps = sorted(points)
        series[key] = (steps, [points[s] for s in steps])
    return series


_TOP_K = re.compile(r"top_?(\d+)")


def _is_top_k(key: str) -> bool:
    """Whether ``key`` is a top-k accuracy with k > 1 (``eval_top5_accuracy``): those sit near 100% and get their
    own panel, so they do not squash the top-1 axis."""
    match = _TOP_K.search(key)
    return bool(match) and int(match.group(1)) > 1


def _all_fractions(values: Sequence[float]) -> bool:
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) >= 0 and max(finite) <= 1


def _draw_panel(ax, kind_series: dict, *, what: str, percent: bool, show_final: bool) -> None:
    """Draws one panel's series; the final eval value goes into the legend text, where it cannot hide a curve."""
    for key, (steps, vals) in kind_series.items():
        shown = [100 * v for v in vals] if percent else vals
        is_eval = not key.startswith("train")
        label = key
        if show_final and is_eval and shown:
            label = f"{key} (final {shown[-1]:.2f}%)" if percent else f"{key} (final {shown[-1]:.4g})"
        ax.plot(steps, shown, label=label, marker="o" if is_eval else None, markersize=4,
                linewidth=1.8 if is_eval else 1.2, alpha=1.0 if is_eval else 0.85)
    values = [v for _, vs in kind_series.values() for v in vs if math.isfinite(v)]
    if what == "loss" and values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")  # losses that fall by orders of magnitude read better on a log axis
    ax.set_xlabel("step")
    ax.set_ylabel(f"{what} (%)" if percent else what)
    ax.set_title(what)
    ax.grid(True, alpha=0.3)
    if kind_series:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, f"no {what} logged", ha="center", va="center", transform=ax.transAxes, color="grey")


def curves_figure(records: Sequence[dict], *, title: str | None = None, source: str = "the records") -> Figure:
    """The curves figure of ``plot_curves`` from metrics records (as ``read_metrics`` returns), not yet saved.

    ``source`` names where the records came from in the error raised when they hold no loss or accuracy.
    """
    series = {kind: metric_series(records, kind) for kind in _KINDS}
    if not any(series.values()):
        keys = sorted({k for r in records for k in r})
        raise ValueError(
            f"{source} has no loss or accuracy values (keys found: {keys}); expected keys "
            "such as 'train_loss', 'eval_loss', 'train_accuracy', 'eval_accuracy'.")
    top1 = {k: v for k, v in series["accuracy"].items() if not _is_top_k(k)}
    top_k = {k: v for k, v in series["accuracy"].items() if _is_top_k(k)}
    panels = [("loss", series["loss"]), ("accuracy", top1)]
    if top_k:
        ks = sorted({int(_TOP_K.search(k).group(1)) for k in top_k})
        panels.append((f"top-{ks[0]} accuracy" if len(ks) == 1 else "top-k accuracy", top_k))

    # The top-k panel is narrower: it only has to show that top-k stays near 100%.
    width_ratios = [1.0, 1.0, 0.7][:len(panels)]
    fig = Figure(figsize=(5.2 * sum(width_ratios), 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True, gridspec_kw={"width_ratios": width_ratios})[0]
    for ax, (what, kind_series) in zip(axes, panels):
        percent = what != "loss" and _all_fractions([v for _, vs in kind_series.values() for v in vs])
        _draw_panel(ax, kind_series, what=what, percent=percent, show_final=what != "loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers, also in short runs
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(metrics_jsonl_path: str | os.PathLike, out_png: str | os.PathLike, *, title: str | None = None) -> str:
    """Plots loss, top-1 accuracy and (when logged) top-k accuracy against the step; returns the PNG's path.

    Accuracies in [0, 1] are shown in percent; top-5 (any top-k, k > 1) gets its own panel because it sits near
    100% and would squash the top-1 axis. Train series are solid lines, eval series lines with markers; the
    final value of every eval accuracy is given in its legend entry, where it cannot cover a curve. Duplicated
    or out-of-order steps are drawn once, in step order (``latest_records``). Raises ValueError when the file
    holds neither a loss nor an accuracy series (or is empty / malformed) and FileNotFoundError when it is
    missing.
    """
    out_png = check_png_path(out_png)
    records = read_metrics(metrics_jsonl_path)
    curves_figure(records, title=title, source=repr(os.fspath(metrics_jsonl_path))).savefig(out_png)
    return out_png


def plot_curve_band(per_seed_records: Sequence[Sequence[dict]], out_png: str | os.PathLike, *,
                    metric: str = "eval_accuracy", title: str | None = None) -> str:
    """Mean +/- standard deviation of ``metric`` over seeds against the step; returns the PNG's path.

    ``per_seed_records``: one list of metrics records (as ``read_metrics`` returns) per seed. Only the steps that
    every seed logged are drawn, so each point averages all seeds; the standard deviation is the sample one
    (ddof=1; no band for a single seed). Accuracies in [0, 1] are shown in percent. Raises ValueError when
    there are no seeds, a seed never logged ``metric``, or the seeds share no step.
    """
    out_png = check_png_path(out_png)
    curve_band_figure(per_seed_records, metric=metric, title=title).savefig(out_png)
    return out_png


def curve_band_figure(per_seed_records: Sequence[Sequence[dict]], *, metric: str = "eval_accuracy",
                      title: str | None = None) -> Figure:
    """The figure of ``plot_curve_band``, not yet saved."""
    if isinstance(per_seed_records, (str, bytes, os.PathLike)) or not per_seed_records:
        raise ValueError("per_seed_records must be a non-empty list with one list of metrics records per seed.")
    per_seed: list[dict[int, float]] = []
    for seed_index, records in enumerate(per_seed_records):
        if isinstance(records, Mapping):
            raise ValueError(f"Seed {seed_index} is a single record; pass one list of records per seed.")
        points = {}
        for record in latest_records(records):
            value = record.get(metric)
            if _is_scalar(value):
                points[int(record["step"])] = float(value)
        if not points:
            keys = sorted({k for r in records for k in r})
            raise ValueError(f"Seed {seed_index} never logged {metric!r} (keys found: {keys}); pick a metric every "
                             "seed logged.")
        per_seed.append(points)
    steps = sorted(set.intersection(*(set(p) for p in per_seed)))
    if not steps:
        raise ValueError(f"The {len(per_seed)} seeds share no step at which {metric!r} was logged; were they run "
                         "with the same config?")
    values = np.array([[p[s] for s in steps] for p in per_seed], dtype=np.float64)  # [seeds, steps]
    percent = metric.endswith("accuracy") and _all_fractions(values.ravel().tolist())
    if percent:
        values = 100 * values
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if len(per_seed) > 1 else np.zeros_like(mean)
    unit = "%" if percent else ""

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for seed_values in values:  # faint per-seed lines show whether the spread is one outlier or all seeds
        ax.plot(steps, seed_values, color="tab:blue", linewidth=0.8, alpha=0.25)
    ax.plot(steps, mean, color="tab:blue", linewidth=1.8, marker="o" if len(steps) <= 30 else None, markersize=3.5,
            label=f"mean of {len(per_seed)} seeds (final {mean[-1]:.2f}{unit} +/- {std[-1]:.2f}{unit})")
    if len(per_seed) > 1:
        ax.fill_between(steps, mean - std, mean + std, color="tab:blue", alpha=0.2, linewidth=0,
                        label="+/- 1 standard deviation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metric} (%)" if percent else metric)
    ax.set_title(title or f"{metric} over {len(per_seed)} seeds")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig
