"""``report.md``: one page per run that ties the final metrics, the config and the plots together.

    write_report(workdir, config=config, final_metrics={"eval_accuracy": 0.9912, ...},
                 plots={"Loss and accuracy": "curves.png", "Confusion matrix": "confusion.png"},
                 per_class_accuracy={"0": 0.998, "1": 0.995, ...})

Numbers are written with up to 6 significant digits (``f"{x:.6g}"``), accuracies also in percent; plots are linked
relative to the workdir so the directory can be moved or browsed as is.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

REPORT_NAME = "report.md"


def format_number(value) -> str:
    """How report tables write a value: ints as ints, floats with 6 significant digits, strings as they are,
    anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return format_number(value.item())
    return json.dumps(_plain(value), sort_keys=True)


def _plain(value):
    """Converts numpy scalars/arrays and nested containers to JSON-serialisable Python values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # jax arrays
        return value.tolist()
    return value


def _config_dict(config) -> dict:
    if hasattr(config, "to_dict") and callable(config.to_dict):  # ml_collections.ConfigDict
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be an ml_collections.ConfigDict or a dict; got {type(config).__name__}.")
    return dict(config)


def flatten_config(config) -> dict[str, object]:
    """Nested config -> ``{"optimizer.learning_rate": 0.1, ...}`` (dotted keys, in config order)."""
    flat: dict[str, object] = {}

    def visit(prefix, node):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping) and value:
                visit(name, value)
            else:
                flat[name] = value

    visit("", _config_dict(config))
    return flat


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _metric_rows(final_metrics: Mapping) -> list[str]:
    rows = ["| metric | value |", "|---|---|"]
    for name, value in final_metrics.items():
        text = format_number(value)
        if (str(name).endswith("accuracy") and isinstance(value, (float, np.floating))
                and 0 <= float(value) <= 1):
            text += f" ({100 * float(value):.2f}%)"
        rows.append(f"| {_escape(name)} | {_escape(text)} |")
    return rows


def _per_class_rows(per_class_accuracy, class_names) -> list[str]:
    if isinstance(per_class_accuracy, Mapping):
        items = [(str(k), v) for k, v in per_class_accuracy.items()]
    else:
        values = list(np.asarray(per_class_accuracy, dtype=np.float64).reshape(-1))
        if class_names is None:
            class_names = [str(i) for i in range(len(values))]
        if len(class_names) != len(values):
            raise ValueError(f"per_class_accuracy has {len(values)} values but class_names has {len(class_names)}; "
                             "pass one name per class.")
        items = list(zip((str(n) for n in class_names), values))
    rows = ["| class | accuracy |", "|---|---|"]
    for name, value in items:
        value = float(value)
        text = "no examples" if math.isnan(value) else f"{value:.6g} ({100 * value:.2f}%)"
        rows.append(f"| {_escape(name)} | {text} |")
    return rows


def write_report(workdir: str | os.PathLike, *, config, final_metrics: Mapping,
                 plots: Mapping[str, str | os.PathLike] | None = None,
                 per_class_accuracy: Mapping[str, float] | Sequence[float] | None = None,
                 class_names: Sequence[str] | None = None, title: str | None = None) -> str:
    """Writes ``workdir/report.md`` and returns its path.

    Args:
      workdir: the run directory (must exist).
      config: the run's ml_collections.ConfigDict (or a plain dict); shown as a table of dotted keys.
      final_metrics: {name: value} of the final evaluation (scalars; other values are written as JSON).
      plots: {caption: path of a PNG}, absolute or relative to ``workdir``; each must exist. Linked relatively.
      per_class_accuracy: {class name: accuracy} or a sequence of C accuracies (names from ``class_names``).
      class_names: names for a sequence ``per_class_accuracy`` (default: class ids).
      title: the report's heading (default: "Run report: <model> on <dataset>" when the config has those).
    """
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"Workdir {workdir!r} does not exist; create it (training does) before the report.")
    if not isinstance(final_metrics, Mapping):
        raise TypeError(f"final_metrics must be a dict of name -> value; got {type(final_metrics).__name__}.")
    if not final_metrics:
        raise ValueError("final_metrics is empty: a report needs the run's final figures.")
    flat_config = flatten_config(config)
    plots = dict(plots or {})
    links = {}
    for caption, path in plots.items():
        path = os.fspath(path)
        full = path if os.path.isabs(path) else os.path.join(workdir, path)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"Plot {caption!r} points to {full!r}, which does not exist; write it first.")
        links[caption] = os.path.relpath(full, workdir).replace(os.sep, "/")

    if title is None:
        model, dataset = flat_config.get("model"), flat_config.get("dataset")
        title = f"Run report: {model} on {dataset}" if model and dataset else "Run report"
    lines = [f"# {title}", "", f"Workdir: `{os.path.abspath(workdir)}`", "", "## Final metrics", ""]
    lines += _metric_rows(final_metrics)
    if per_class_accuracy is not None:
        lines += ["", "## Per-class accuracy", ""] + _per_class_rows(per_class_accuracy, class_names)
    if links:
        lines += ["", "## Plots", ""]
        for caption, link in links.items():
            lines += [f"### {caption}", "", f"![{caption}]({link})", ""]
    lines += ["", "## Config", "", "| key | value |", "|---|---|"]
    lines += [f"| {_escape(k)} | {_escape(format_number(v) if not isinstance(v, str) else v)} |"
              for k, v in flat_config.items()]
    lines += ["", "Full config as JSON:", "", "```json",
              json.dumps(_plain(_config_dict(config)), indent=2, sort_keys=True, default=str), "```", ""]
    path = os.path.join(workdir, REPORT_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)  # readers never see a half-written report
    return path
