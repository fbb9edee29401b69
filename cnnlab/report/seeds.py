"""report.md of a run over several seeds: the summary table, the per-seed table, accuracy with its error bar
and (train jobs) the learning curves of all seeds as a band.

    path = write_seeds_report(workdir, results, title="lenet5 on mnist over 5 seeds",
                              metrics_paths=["runs/x/seed_0/metrics.jsonl", ...])

``results`` is the aggregate record (``cnnlab.jobs.workdir`` schema with its ``seeds`` section); the figures are
seeds_accuracy.png and seeds_curves.png next to report.md. Records in, files out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from cnnlab.report import comparison, curves, stats

_NAMES = {"test_accuracy": ("test accuracy", 100.0, "%", 2),
          "test_top5_accuracy": ("test top-5 accuracy", 100.0, "%", 2),
          "test_loss": ("test loss", 1.0, "", 4), "train_s": ("training time", 1.0, " s", 1),
          "inference_s_per_1000": ("inference s / 1,000 images", 1.0, " s", 4)}


def _cell(value, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def seeds_markdown(results: Mapping, *, title: str, plots: Mapping[str, str]) -> str:
    """The report's text: metric summaries (mean, std, min, max, 95% CI, N), bootstrap interval, per-seed rows."""
    section = results["seeds"]
    lines = [f"# {title}", "",
             f"{section['n']} seeds: {', '.join(str(s) for s in section['values'])}"
             f"{' (trained stacked, in one vmapped program)' if section.get('stacked') else ''}. "
             "Intervals: 95% Student t of the mean (n - 1 degrees of freedom); std is the sample one (ddof=1).", "",
             "| metric | mean +/- std | min | max | 95% CI of the mean | N |", "|---|---|---|---|---|---|"]
    for name, summary in section["metrics"].items():
        label, scale, unit, digits = _NAMES.get(name, (name, 1.0, "", 4))
        s = stats.Summary(**summary)
        # Equal values: a deterministic method, or a saturated metric (top-5 at 100%): say so, no interval.
        spread = (f"{_cell(s.mean, scale, digits)}{unit} (no spread: all {s.n} seeds equal)" if s.deterministic
                  else f"{_cell(s.mean, scale, digits)} +/- {_cell(s.std, scale, digits)}{unit}")
        ci = "-" if s.ci_low is None else f"{_cell(s.ci_low, scale, digits)} - {_cell(s.ci_high, scale, digits)}{unit}"
        lines.append(f"| {label} | {spread} | {_cell(s.min, scale, digits)} | {_cell(s.max, scale, digits)} | {ci} "
                     f"| {s.n} |")
    boot = section.get("accuracy_bootstrap")
    lines.append("")
    if boot:
        lines.append(f"Bootstrap {round(100 * boot['confidence'])}% interval of the mean test accuracy "
                     f"({boot['resamples']} resamples of the {boot['test_images']:,} test images, the same draw for "
                     f"every seed): {100 * boot['low']:.2f}% - {100 * boot['high']:.2f}%. The t interval covers "
                     "seed-to-seed variation; the bootstrap covers the finite test set.")
    else:
        lines.append("No bootstrap interval: not every seed wrote predictions.npy for the same test images.")
    lines += ["", "| seed | workdir | test accuracy | test loss | training time | final parameters (SHA-256) |",
              "|---|---|---|---|---|---|"]
    per_seed = section["per_seed"]
    for i, seed in enumerate(section["values"]):
        digest = section["params_sha256"][i]
        lines.append(f"| {seed} | `{section['workdirs'][i]}/` | {_cell(per_seed['test_accuracy'][i], 100, 2)}% | "
                     f"{_cell(per_seed['test_loss'][i], 1, 4)} | {_cell(per_seed['train_s'][i], 1, 1)} s | "
                     f"{'`' + digest[:16] + '...`' if digest else '-'} |")
    lines.append("")
    for caption, path in plots.items():
        lines += [f"## {caption}", "", f"![{caption}]({os.path.basename(path)})", ""]
    return "\n".join(lines)


def write_seeds_report(workdir: str, results: Mapping, *, title: str,
                       metrics_paths: Sequence[str] | None = None) -> str:
    """Writes seeds_accuracy.png, seeds_curves.png (when ``metrics_paths``, one metrics.jsonl per seed) and
    report.md into ``workdir``; returns report.md's path."""
    section = results["seeds"]
    plots = {"Test accuracy of each seed, mean and 95% CI": comparison.plot_accuracy_error_bars(
        [{"method": results["model"]["name"] or results["kind"], "accuracies": section["per_seed"]["test_accuracy"]}],
        os.path.join(workdir, "seeds_accuracy.png"), title=title)}
    if metrics_paths:
        per_seed_records = [curves.read_metrics(path) for path in metrics_paths]
        for metric, caption in (("eval_accuracy", "Eval accuracy over training, mean +/- std of the seeds"),
                                ("train_loss", "Training loss, mean +/- std of the seeds")):
            if all(any(metric in r for r in records) for records in per_seed_records):
                name = f"seeds_curves_{metric}.png"
                plots[caption] = curves.plot_curve_band(per_seed_records, os.path.join(workdir, name), metric=metric,
                                                        title=f"{title}: {metric}")
    path = os.path.join(workdir, "report.md")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(seeds_markdown(results, title=title, plots=plots))
    os.replace(tmp, path)
    return path
