"""Loss and accuracy curves (train and eval) from a run's ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per log point, each with an integer ``"step"``. Training log points carry
e.g. ``"train_loss"``, ``"train_accuracy"``; evaluations carry ``"eval_loss"``, ``"eval_accuracy"`` (and maybe
``"eval_top5_accuracy"``, ``"epoch"``...). Every scalar key ending in ``loss`` is drawn on the loss panel and every
scalar key ending in ``accuracy`` on the accuracy panel, against the step.

Figures are built with ``matplotlib.figure.Figure`` (Agg canvas), never pyplot, so nothing global is touched.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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


def metric_series(records: Sequence[dict], kind: str) -> dict[str, tuple[list[int], list[float]]]:
    """Collects the series of one ``kind`` ("loss" or "accuracy") from metrics records.

    Returns ``{key: (steps, values)}`` for every key that ends with ``kind`` and has a scalar value in some
    record, in the order keys first appear; points are sorted by step (a resumed run may log a step twice: the
    last record for a step wins).
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown metric kind {kind!r}; use one of {_KINDS}.")
    by_key: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.items():
            if key.endswith(kind) and _is_scalar(value):
                by_key.setdefault(key, {})[int(record["step"])] = float(value)
    series = {}
    for key, points in by_key.items():
        steps = sorted(points)
        series[key] = (steps, [points[s] for s in steps])
    return series


def plot_curves(metrics_jsonl_path: str | os.PathLike, out_png: str | os.PathLike, *, title: str | None = None) -> str:
    """Plots loss (left) and accuracy (right) against the training step; returns the path of the PNG.

    Accuracies in [0, 1] are shown in percent. Train series are solid lines, eval series are lines with markers.
    Raises ValueError when the file holds neither a loss nor an accuracy series (or is empty / malformed) and
    FileNotFoundError when it is missing.
    """
    out_png = check_png_path(out_png)
    records = read_metrics(metrics_jsonl_path)
    series = {kind: metric_series(records, kind) for kind in _KINDS}
    if not any(series.values()):
        keys = sorted({k for r in records for k in r})
        raise ValueError(
            f"{os.fspath(metrics_jsonl_path)!r} has no loss or accuracy values (keys found: {keys}); expected keys "
            "such as 'train_loss', 'eval_loss', 'train_accuracy', 'eval_accuracy'.")

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, kind in zip(fig.subplots(1, 2), _KINDS):
        kind_series = series[kind]
        values = [v for _, vs in kind_series.values() for v in vs if math.isfinite(v)]
        percent = kind == "accuracy" and values and min(values) >= 0 and max(values) <= 1
        for key, (steps, vals) in kind_series.items():
            shown = [100 * v for v in vals] if percent else vals
            is_eval = not key.startswith("train")
            ax.plot(steps, shown, label=key, marker="o" if is_eval else None, markersize=4,
                    linewidth=1.8 if is_eval else 1.2, alpha=1.0 if is_eval else 0.85)
        if kind == "loss" and values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")  # losses that fall by orders of magnitude read better on a log axis
        ax.set_xlabel("step")
        ax.set_ylabel(f"{kind} (%)" if percent else kind)
        ax.set_title(kind)
        ax.grid(True, alpha=0.3)
        if kind_series:
            ax.legend(fontsize=8)
            if percent:
                # The final value of the headline metric (eval_accuracy when logged; else every eval series).
                shown = ["eval_accuracy"] if "eval_accuracy" in kind_series else list(kind_series)
                last = {k: (s[-1], 100 * v[-1]) for k, (s, v) in kind_series.items()
                        if k in shown and not k.startswith("train")}
                for key, (step, value) in last.items():
                    ax.annotate(f"{value:.2f}%", (step, value), textcoords="offset points", xytext=(-4, -12),
                                ha="right", fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {kind} logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    if title:
        fig.suptitle(title)
    fig.savefig(out_png)
    return out_png
