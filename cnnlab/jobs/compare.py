"""The ``compare`` job: classical descriptors, kNN and CNNs side by side on the same data split.

    python -m experiments.main --config=experiments/configs/compare.py:fashion_mnist --workdir=DIR

``run(config, workdir)`` runs every job named in ``config.methods`` in its own sub-workdir ``DIR/<method>``
with its own config (``config.jobs.<method>``, a complete experiment config of kind "classical", "knn" or
"train"), through ``cnnlab.jobs.JOBS``, the same table ``experiments.main`` dispatches through. A job whose
``DIR/<method>/results.json`` exists and whose ``config.json`` matches its config is not run again; one whose
results exist for a *different* config stops the comparison with an error (use a fresh DIR or delete that
sub-workdir). A job with no results yet is (re)started and resumes from its own checkpoints where it has them.

The comparison is built only from the jobs' results.json, which every job fills in the same schema
(``cnnlab.jobs.workdir``); each row names the file it came from (``source``). Outputs:

  comparison.json  {"dataset", "split_description", "command", "machine", "methods": [row, ...], "wall_s"},
                   row = {"method", "kind", "test_accuracy", "test_count", "train_count", "epochs",
                   "train_time_s", "inference_s_per_1000", "num_params", "model_bytes", "ran_on", "chosen",
                   "job_wall_s", "source", "ran_now"}   (None where a job has no such figure)
  comparison.md    the same as a table, with the machine and the command
  comparison.png   test accuracy against training time (log x), one labelled point per method
  results.json     the schema's record for the comparison as a whole: the best method's test figures

Over seeds (``--config.seeds=N``, N > 1): every method runs over the same seeds ``seed .. seed + N - 1`` (each
job's own ``seed`` is the first; they must agree) on the same split, as a seeds run in ``DIR/<method>/seed_<n>/``
(``cnnlab.jobs.seeds``; train jobs with ``seeds_stacked`` train their seeds in one program). The rows then hold
the mean accuracy and the seeds' statistics (``seeds``, ``accuracies``, ``accuracy_std``, ``accuracy_ci``,
``deterministic``: exact kNN on a fixed split gives the same accuracy for every seed, and the table says "no
spread" rather than showing a zero-width interval), and comparison.json adds

  paired_tests     [{"a", "b", "n", "mean_difference", "t_statistic", "p_value", "identical_differences"}]: a
                   paired t test of each pair of methods over the seeds (``stats.paired_test``)
  mcnemar          [{"a", "b", "seed", "only_a", "only_b", "p_value"}]: McNemar's exact test on the test-set
                   predictions of the first seed of each pair (predictions.npy), when both jobs wrote them

comparison.md says which differences are real at the 5% level, and comparison_seeds.png draws each method's
per-seed accuracies with the mean's error bar. McNemar's test runs for N = 1 too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import numpy as np
from absl import logging

import cnnlab.jobs  # the JOBS table: read at call time (this module is one of its entries)
from cnnlab.jobs import seeds as seeds_lib
from cnnlab.jobs import workdir as workdir_lib
from cnnlab.report import comparison as comparison_plot
from cnnlab.report import run_report, stats

METHOD_KINDS = ("train", "knn", "classical")


# ------------------------------------------------------------------------------------------- config matching


def config_differences(expected_config, written_config: Mapping) -> list[str]:
    """Keys of ``expected_config`` whose value differs in (or is missing from) a job's written ``config.json``.

    Keys that only the written config has (fields a job adds while running) are ignored.
    """
    expected = run_report.flatten_config(workdir_lib.to_jsonable(expected_config))
    written = run_report.flatten_config(workdir_lib.to_jsonable(dict(written_config)))
    missing = object()
    differences = []
    for key, value in expected.items():
        other = written.get(key, missing)
        if other is missing:
            differences.append(f"{key}: {value!r} (not in the written config)")
        elif other != value:
            differences.append(f"{key}: {value!r} here, {other!r} in the written config")
    return differences


def job_is_done(job_config, job_workdir: str) -> bool:
    """True if ``job_workdir`` holds results of this very config; False if it holds no results yet.

    Raises ValueError when results exist for a different config (or no config.json beside them).
    """
    results_path = os.path.join(job_workdir, workdir_lib.RESULTS_FILE)
    if not os.path.isfile(results_path):
        return False
    config_path = os.path.join(job_workdir, workdir_lib.CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ValueError(f"{results_path} exists but {config_path} does not, so it cannot be matched to the "
                         "config. Delete that sub-workdir to run the job again, or use a fresh --workdir.")
    differences = config_differences(job_config, workdir_lib.read_json(config_path))
    if differences:
        raise ValueError(
            f"{job_workdir} holds results of a different config ({'; '.join(differences[:8])}"
            f"{'; ...' if len(differences) > 8 else ''}). Use a fresh --workdir, or delete {job_workdir} to rerun it.")
    return True


def run_job(method: str, job_config, job_workdir: str) -> bool:
    """Runs one job unless it is done; returns True if it ran now, False if its results were already there."""
    if job_is_done(job_config, job_workdir):
        logging.info("compare: %s already done in %s, skipping", method, job_workdir)
        return False
    kind = job_config.get("kind", "train")
    logging.info("compare: running %s (%s) in %s", method, kind, job_workdir)
    if seeds_lib.num_seeds(job_config) > 1:
        seeds_lib.run(job_config, job_workdir)
    else:
        cnnlab.jobs.JOBS[kind](job_config, job_workdir)
    if not os.path.isfile(os.path.join(job_workdir, workdir_lib.RESULTS_FILE)):
        raise RuntimeError(f"The {kind!r} job {method!r} finished without writing {job_workdir}/"
                           f"{workdir_lib.RESULTS_FILE}; every job must write its final figures there.")
    return True


# ------------------------------------------------------------------------------------------- rows


def method_row(method: str, job_workdir: str, root: str) -> dict:
    """The comparison row of one finished job, read from its results.json (schema-checked)."""
    results = workdir_lib.Workdir(job_workdir, is_chief=False).read_results()
    source = os.path.relpath(os.path.join(job_workdir, workdir_lib.RESULTS_FILE), root).replace(os.sep, "/")
    if results is None:
        raise FileNotFoundError(f"{source} does not exist: the {method!r} job has not finished.")
    return {
        "method": method, "kind": results["kind"],
        "test_accuracy": results["test"]["accuracy"], "test_count": results["test"]["count"],
        "train_count": results["splits"]["train"], "epochs": results["details"].get("epochs"),
        "train_time_s": results["timing"]["train_s"], "inference_s_per_1000": results["timing"]["inference_s_per_1000"],
        "num_params": results["model"]["num_params"], "model_bytes": results["model"]["bytes"],
        "ran_on": workdir_lib.describe_machine(results["machine"]), "chosen": results["chosen_text"],
        "job_wall_s": results["timing"]["wall_s"], "source": source,
        **_seed_fields(results),
    }


def _seed_fields(results: Mapping) -> dict:
    """The row's statistics over seeds (from the aggregate record's ``seeds`` section); {} for a single run."""
    section = results.get("seeds")
    if not section:
        return {}
    summary = section["metrics"]["test_accuracy"]
    boot = section.get("accuracy_bootstrap")
    return {"seeds": section["values"], "accuracies": section["per_seed"]["test_accuracy"],
            "accuracy_std": summary["std"], "accuracy_ci": [summary["ci_low"], summary["ci_high"]],
            "accuracy_bootstrap_ci": [boot["low"], boot["high"]] if boot else None,
            "deterministic": summary["deterministic"], "stacked": section.get("stacked", False)}


def predictions_workdir(job_workdir: str, results: Mapping | None = None) -> str:
    """Where a job's predictions.npy are: its workdir, or its first seed's for a seeds run."""
    first_seed = seeds_lib.seed_workdir(job_workdir, 0)
    return first_seed if os.path.isdir(first_seed) else job_workdir


def significance(rows: list[dict], root: str) -> tuple[list[dict], list[dict]]:
    """(paired t tests over the seeds of every pair of methods, McNemar tests on the first seed of every pair).

    Paired tests need >= 2 seeds per method; McNemar needs both methods' predictions on the same test images
    (pairs without them are left out, and the markdown says so).
    """
    paired, mcnemar = [], []
    predictions = {}
    for row in rows:
        pair = workdir_lib.Workdir(predictions_workdir(os.path.join(root, row["method"])), is_chief=False)
        predictions[row["method"]] = pair.read_predictions()
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if len(a.get("accuracies", ())) >= 2 and a.get("seeds") == b.get("seeds"):
                test = stats.paired_test(a["accuracies"], b["accuracies"])
                paired.append({"a": a["method"], "b": b["method"], **test.to_dict()})
            pa, pb = predictions[a["method"]], predictions[b["method"]]
            if pa is not None and pb is not None and np.array_equal(pa[1], pb[1]):
                test = stats.mcnemar(pa[0] == pa[1], pb[0] == pb[1])
                seed = a["seeds"][0] if a.get("seeds") else None
                mcnemar.append({"a": a["method"], "b": b["method"], "seed": seed, **test.to_dict()})
    return paired, mcnemar


# ------------------------------------------------------------------------------------------- outputs


def _format_seconds(seconds) -> str:
    if seconds is None:
        return "not measured"
    if seconds >= 100:
        return f"{seconds:,.0f} s"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    return f"{1000 * seconds:.3g} ms"


def _format_size(row: Mapping) -> str:
    parts = []
    if row.get("num_params") is not None:
        parts.append(f"{int(row['num_params']):,} params")
    if row.get("model_bytes") is not None:
        size, unit = float(row["model_bytes"]), "B"
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                break
            size /= 1024
        parts.append(f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}")
    return ", ".join(parts) if parts else "not reported"


def comparison_markdown(comparison: Mapping) -> str:
    """comparison.md: the table (best accuracy first), the machine, the split and where the numbers come from."""
    rows = sorted(comparison["methods"], key=lambda r: -r["test_accuracy"])
    machines = {row["ran_on"] for row in rows}
    lines = [f"# Comparison on {comparison['dataset']}", "",
             f"Command: `{comparison['command']}`", "",
             f"Machine: {workdir_lib.describe_machine(comparison['machine'])}", "",
             f"Split: {comparison['split_description']}", "",
             "| method | test accuracy | test images | training images | training time | "
             "inference / 1,000 images | size | chosen |" + (" ran on |" if len(machines) > 1 else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if len(machines) > 1 else "")]
    for row in rows:
        trained = f"{int(row['train_count']):,}"
        if row["epochs"] is not None:
            trained += f" x {row['epochs']:.3g} epochs"
        lines.append(
            f"| {row['method']} | {_accuracy_cell(row)} | {int(row['test_count']):,} | {trained} | "
            f"{_format_seconds(row['train_time_s'])} | {_format_seconds(row['inference_s_per_1000'])} | "
            f"{_format_size(row)} | {row['chosen'].replace('|', '/')} |"
            + (f" {row['ran_on']} |" if len(machines) > 1 else ""))
    if len(machines) == 1:
        lines += ["", f"Every job ran on: {machines.pop()}."]
    timed = [(r["method"], r["job_wall_s"]) for r in rows if r.get("job_wall_s") is not None]
    if timed:
        per_job = ", ".join(f"{method} {_format_seconds(seconds)}" for method, seconds in timed)
        lines += ["", "Wall time of each job's last invocation (data loading, compilation, evaluation and plots "
                      f"included): {per_job}; total {_format_seconds(sum(s for _, s in timed))}."]
    lines += [f"Wall time of this invocation: {_format_seconds(comparison['wall_s'])} "
              f"(jobs run now: {', '.join(r['method'] for r in rows if r['ran_now']) or 'none, all were done'}).",
              "", "Training time: CNNs, the training steps without compilation or evaluation; kNN, placing the "
              "training set plus choosing k and the metric by cross-validation; classical, fitting the chosen "
              "pipeline plus computing its training descriptors.", "",
              "Every number is read from the jobs' own results files: "
              + ", ".join(f"`{r['source']}`" for r in rows) + ".",
              "", "![accuracy against training time](comparison.png)", ""]
    lines += _significance_markdown(comparison)
    return "\n".join(lines)


def _accuracy_cell(row: Mapping) -> str:
    """``97.21%`` for one run; ``97.21 +/- 0.30% (95% CI 96.84-97.58, n=5)`` or ``... (no spread: deterministic,
    n=5)`` over seeds (the mean, sample std and Student-t interval)."""
    if not row.get("accuracies"):
        return f"{100 * row['test_accuracy']:.2f}%"
    return stats.summarize(row["accuracies"]).text(scale=100, unit="%")


def _p_text(p_value) -> str:
    return "undefined" if p_value is None else (f"{p_value:.2g}" if p_value < 0.001 else f"{p_value:.3f}")


def _significance_markdown(comparison: Mapping, level: float = 0.05) -> list[str]:
    """The seeds section of comparison.md: how the numbers were made and which differences are real."""
    lines = []
    seeded = [r for r in comparison["methods"] if r.get("accuracies")]
    if seeded:
        seeds = seeded[0]["seeds"]
        lines += ["## Over seeds", "",
                  f"Every method ran with seeds {', '.join(map(str, seeds))} on the same split; accuracy is the mean "
                  "+/- the sample standard deviation, with the 95% Student-t interval of the mean."]
        steady = [r["method"] for r in seeded if r.get("deterministic")]
        if steady:
            lines.append(f"No spread over seeds (the method is deterministic on this split): {', '.join(steady)}.")
        lines += ["", "![test accuracy over seeds](comparison_seeds.png)", ""]
    if comparison.get("paired_tests"):
        lines += [f"Paired t tests over the seeds (a - b; a difference is called real when p < {level:g}):", "",
                  "| a | b | mean difference | t | p | real? |", "|---|---|---|---|---|---|"]
        for t in comparison["paired_tests"]:
            if t["identical_differences"]:
                verdict = "every seed differs by the same amount: no variance to test" + (
                    "" if t["mean_difference"] else " (identical results)")
            else:
                verdict = "yes" if t["p_value"] < level else "no (could be seed noise)"
            statistic = "-" if t["t_statistic"] is None else f"{t['t_statistic']:.2f}"
            lines.append(f"| {t['a']} | {t['b']} | {100 * t['mean_difference']:+.2f} points | {statistic} | "
                         f"{_p_text(t['p_value'])} | {verdict} |")
        lines.append("")
    if comparison.get("mcnemar"):
        first = comparison["mcnemar"][0]["seed"]
        which = f" (seed {first} of each method)" if first is not None else ""
        lines += [f"McNemar's exact test on the test images{which}: "
                  "images only a got right, only b got right, two-sided p:", "",
                  "| a | b | only a right | only b right | p | real? |", "|---|---|---|---|---|---|"]
        for t in comparison["mcnemar"]:
            lines.append(f"| {t['a']} | {t['b']} | {t['only_a']} | {t['only_b']} | {_p_text(t['p_value'])} | "
                         f"{'yes' if t['p_value'] < level else 'no'} |")
        lines.append("")
    elif seeded:
        lines += ["McNemar's test: not every method wrote predictions.npy for the same test images.", ""]
    return lines


# ------------------------------------------------------------------------------------------- run


def check_config(config) -> None:
    for field in ("dataset", "methods", "jobs"):
        if field not in config:
            raise ValueError(f"A compare config needs a {field!r} field (see experiments/configs/compare.py).")
    methods = list(config.methods)
    if not methods:
        raise ValueError("config.methods is empty: name at least one job of config.jobs to compare.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"config.methods names a job twice: {methods}.")
    unknown = [m for m in methods if m not in config.jobs]
    if unknown:
        raise ValueError(f"config.methods names {unknown}, which config.jobs lacks; jobs defined: {sorted(config.jobs)}.")
    if seeds_lib.num_seeds(config) > 1:
        first = {m: config.jobs[m].get("seed", 0) for m in methods}
        if len(set(first.values())) > 1:
            raise ValueError(f"Over seeds every method must start from the same seed, got {first}; set the jobs' "
                             "seed fields equal.")
    for method in methods:
        job = config.jobs[method]
        kind = job.get("kind", "train")
        if kind not in METHOD_KINDS:
            raise ValueError(f"Job {method!r} has kind {kind!r}; a comparison runs jobs of kinds {list(METHOD_KINDS)}.")
        if job.get("dataset", config.dataset) != config.dataset:
            raise ValueError(f"Job {method!r} uses dataset {job.get('dataset')!r}, not the comparison's "
                             f"{config.dataset!r}: every method must see the same data.")


def job_config(config, method: str):
    """The config ``method`` runs with: ``config.jobs[method]``, over the comparison's ``seeds`` when N > 1."""
    job = config.jobs[method]
    count = seeds_lib.num_seeds(config)
    if count == 1:
        return job
    job = job.copy_and_resolve_references()
    with job.unlocked():
        job.seeds = count
    return job


def run(config, workdir: str) -> dict:
    """Runs (or reuses) every job in ``config.methods`` under ``workdir`` and writes the comparison files.

    Returns the comparison's results record (results.json); the table is in comparison.json/.md/.png.
    """
    check_config(config)
    start = time.perf_counter()
    wd = workdir_lib.Workdir(workdir)
    with wd.locked(command=f"compare on {config.dataset}"):
        wd.write_config(config)
        machine = workdir_lib.machine_info()
        logging.info("compare: %s on %s", config.dataset, workdir_lib.describe_machine(machine))
        rows = []
        for method in config.methods:
            job_workdir = wd.file(method)
            ran_now = run_job(method, job_config(config, method), job_workdir)
            row = method_row(method, job_workdir, wd.path)
            row["ran_now"] = ran_now
            rows.append(row)
            logging.info("compare: %s test accuracy %.4f, training %.1f s", method, row["test_accuracy"],
                         row["train_time_s"])

        comparison = {"dataset": config.dataset, "split_description": config.get("split_description", ""),
                      "command": config.get("command", ""), "machine": machine, "methods": rows,
                      "wall_s": time.perf_counter() - start}
        comparison["paired_tests"], comparison["mcnemar"] = significance(rows, wd.path)
        comparison_plot.plot_comparison(rows, wd.file("comparison.png"),
                                        title=f"{config.dataset}: test accuracy against training time")
        if any(r.get("accuracies") for r in rows):
            comparison_plot.plot_accuracy_error_bars(
                [{"method": r["method"], "accuracies": r.get("accuracies") or [r["test_accuracy"]]} for r in rows],
                wd.file("comparison_seeds.png"), title=f"{config.dataset}: test accuracy over seeds")
        report = wd.write_text("comparison.md", comparison_markdown(comparison))
        workdir_lib.write_json(wd.file("comparison.json"), comparison)
        best = max(rows, key=lambda r: r["test_accuracy"])  # first of equals: config order
        results = workdir_lib.results_record(
            kind="compare", dataset=config.dataset, train_count=best["train_count"], test_count=best["test_count"],
            test_accuracy=best["test_accuracy"], train_s=sum(r["train_time_s"] for r in rows),
            inference_s_per_1000=best["inference_s_per_1000"], wall_s=comparison["wall_s"], model_name=best["method"],
            num_params=best["num_params"], model_bytes=best["model_bytes"], chosen={"method": best["method"]},
            chosen_text=f"best: {best['method']}", machine=machine,
            details={"methods": rows, "comparison": "comparison.json"})
        wd.write_results(results)
        ranking = ", ".join(f"{r['method']} {100 * r['test_accuracy']:.2f}%"
                            for r in sorted(rows, key=lambda r: -r["test_accuracy"]))
        print(f"Comparison on {config.dataset}: {ranking}", flush=True)
        print(f"Results: {wd.file(workdir_lib.RESULTS_FILE)}  Report: {report}", flush=True)
    return results
