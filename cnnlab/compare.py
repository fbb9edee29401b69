"""One comparison: classical descriptors, kNN and CNNs side by side on the same data split.

    python -m experiments.main --config=experiments/configs/compare.py:fashion_mnist --workdir=DIR

``run(config, workdir)`` runs every job named in ``config.methods`` in its own sub-workdir ``DIR/<method>``
with its own config (``config.jobs.<method>``, a complete experiment config of kind "classical", "knn" or
"train"), through the same function ``experiments.main`` would call for that config. A job whose
``DIR/<method>/results.json`` exists and whose ``config.json`` matches its config is not run again; one whose
results exist for a *different* config stops the comparison with an error (use a fresh DIR or delete that
sub-workdir). A job with no results yet is (re)started and resumes from its own checkpoints where it has them.

The comparison is then built only from what the jobs wrote: each row of ``comparison.json`` names, for every
number, the file and key it was read from (``"sources"``), so every figure can be traced to the run. Outputs:

  comparison.json  {"dataset", "split_description", "command", "machine", "methods": [{"method", "kind",
                   "test_accuracy", "test_count", "train_count", "epochs", "train_time_s",
                   "inference_s_per_1000", "num_params", "model_bytes", "device", "chosen", "job_wall_s",
                   "sources", "ran_now"}, ...], "wall_s"}   (None where a job does not report a figure)
  comparison.md    the same as a table, with the machine and the command
  comparison.png   test accuracy against training time (log x), one labelled point per method
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence

from absl import logging

RESULTS_NAME = "results.json"
CONFIG_NAME = "config.json"
JOB_TIME_NAME = "compare_job.json"  # written by run_job: the job's wall time when it last ran to the end

# kind -> (module, function): the same job functions experiments/main.py dispatches to (it is not imported here
# because importing it defines absl flags a second time inside `python -m experiments.main`).
_JOBS = {
    "train": ("cnnlab.train", "train_and_evaluate"),
    "knn": ("cnnlab.knn_experiment", "run"),
    "classical": ("cnnlab.classical", "run_experiment"),
}

# Where each figure is read from in a job's results.json, in order of preference; "a.b" is results["a"]["b"].
# Training jobs (cnnlab.train) write eval_accuracy (the last epoch's, on eval_split = "test"), eval_count;
# the classical pipeline writes its best classifier under "best" and its test subset size as test_size.
_FIELDS = {
    "test_accuracy": ("test_accuracy", "best.test_accuracy", "eval_accuracy"),
    "train_time_s": ("train_time_s", "best.train_time_s", "cv_time_s"),
    "inference_s_per_1000": ("inference_s_per_1000", "best.inference_s_per_1000"),
    "num_params": ("num_params",),
    "model_bytes": ("model_bytes", "best.model_bytes", "memory_bytes", "index_bytes"),
    "test_count": ("test_count", "eval_count", "test_size"),
    "train_count": ("train_count", "train_size"),
    "epochs": ("epochs",),
}
_REQUIRED = ("test_accuracy", "train_time_s")
# kNN (cnnlab.knn_experiment) writes test_accuracy, test_size, fit_time_s, cv_time_s, k, metric, train_size:
# see _knn_fields.
_TEXT_FIELDS = {"device": ("device",), "chosen": ("best.method", "chosen", "best_params")}


# ------------------------------------------------------------------------------------------- config helpers


def _to_dict(config) -> dict:
    if hasattr(config, "to_dict") and callable(config.to_dict):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"Expected an ml_collections.ConfigDict or dict, got {type(config).__name__}.")
    return dict(config)


def _normalised(value):
    """JSON round trip: tuples become lists, numpy scalars plain numbers; what config.json on disk holds."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def _flatten(node: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def config_differences(expected_config, written_config: Mapping) -> list[str]:
    """Keys of ``expected_config`` whose value differs in (or is missing from) a job's written ``config.json``.

    Keys that only the written config has (fields a job adds while running) are ignored.
    """
    expected = _flatten(_normalised(_to_dict(expected_config)))
    written = _flatten(_normalised(dict(written_config)))
    missing = object()
    differences = []
    for key, value in expected.items():
        other = written.get(key, missing)
        if other is missing:
            differences.append(f"{key}: {value!r} (not in the written config)")
        elif other != value:
            differences.append(f"{key}: {value!r} here, {other!r} in the written config")
    return differences


# ------------------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """The machine this process runs on: CPU model, logical and usable cores, memory, jax backend and devices."""
    import jax

    cpu_model = platform.processor() or platform.machine()
    memory_gib = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_gib = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass  # not Linux: platform's description stays
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    devices = jax.devices()
    return {
        "cpu_model": cpu_model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores,
        "memory_gib": memory_gib,
        "jax_backend": jax.default_backend(),
        "jax_devices": f"{len(devices)} x {devices[0].device_kind}",
        "jax_version": jax.__version__,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def describe_machine(machine: Mapping) -> str:
    """One line: "AMD EPYC ... (2 of 2 cores usable, 23.4 GiB), jax cpu: 1 x cpu"."""
    memory = f", {machine['memory_gib']} GiB" if machine.get("memory_gib") else ""
    return (f"{machine['cpu_model']} ({machine['usable_cores']} of {machine['logical_cores']} cores usable{memory}), "
            f"jax {machine['jax_version']} {machine['jax_backend']}: {machine['jax_devices']}")


# ------------------------------------------------------------------------------------------- jobs


def job_function(kind: str):
    """The function that runs a job of this ``kind`` (lazily imported); unknown kinds list the known ones."""
    if kind not in _JOBS:
        raise ValueError(f"Unknown job kind {kind!r}; a comparison runs jobs of kinds {sorted(_JOBS)}.")
    module, function = _JOBS[kind]
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"The {kind!r} job needs {module}.{function}, which cannot be imported: {e}") from e


def read_json(path: str) -> dict:
    """A JSON object from ``path``, with clear errors for a missing or malformed file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    with open(path, encoding="utf-8") as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}).") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(value).__name__}.")
    return value


def job_is_done(job_config, job_workdir: str) -> bool:
    """True if ``job_workdir`` holds results of this very config; False if it holds no results yet.

    Raises ValueError when results exist for a different config (or no config.json beside them).
    """
    results_path = os.path.join(job_workdir, RESULTS_NAME)
    if not os.path.isfile(results_path):
        return False
    config_path = os.path.join(job_workdir, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise ValueError(f"{results_path} exists but {config_path} does not, so it cannot be matched to the "
                         "config. Delete that sub-workdir to run the job again, or use a fresh --workdir.")
    differences = config_differences(job_config, read_json(config_path))
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
    function = job_function(kind)
    os.makedirs(job_workdir, exist_ok=True)
    logging.info("compare: running %s (%s) in %s", method, kind, job_workdir)
    start = time.perf_counter()
    function(job_config, job_workdir)
    wall_s = time.perf_counter() - start
    logging.info("compare: %s finished in %.1f s", method, wall_s)
    if not os.path.isfile(os.path.join(job_workdir, RESULTS_NAME)):
        raise RuntimeError(f"The {kind!r} job {method!r} finished without writing {job_workdir}/{RESULTS_NAME}; "
                           "every job must write its final figures there.")
    # The job's whole wall time (data loading, compilation, evaluation, plots), kept for later invocations.
    with open(os.path.join(job_workdir, JOB_TIME_NAME), "w", encoding="utf-8") as f:
        json.dump({"wall_s": wall_s, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
    return True


# ------------------------------------------------------------------------------------------- rows


_MISSING = object()


def lookup(results: Mapping, key: str):
    """``results[a][b]...`` for a dotted ``key`` "a.b..."; a sentinel when any part is missing."""
    node = results
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _number(value, field: str, method: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{method}: {field} must be a finite number, got {value!r}.")
    return value


def method_row(method: str, job_config, job_workdir: str, root: str) -> dict:
    """The comparison row of one finished job, read from its results.json.

    ``row["sources"][field]`` says which file and key every number and text came from ("knn/results.json:
    test_accuracy"), so a reader (and tests/test_compare.py) can check each one against the job's own files.
    Raises KeyError when the test accuracy or the training time is missing.
    """
    rel_path = os.path.relpath(os.path.join(job_workdir, RESULTS_NAME), root).replace(os.sep, "/")
    results = read_json(os.path.join(job_workdir, RESULTS_NAME))
    sources: dict[str, str] = {}
    row = {"method": method, "kind": job_config.get("kind", "train")}
    for field, keys in {**_FIELDS, **_TEXT_FIELDS}.items():
        row[field] = None
        for key in keys:
            value = lookup(results, key)
            if value is not _MISSING and value is not None:
                if field in _FIELDS:
                    value = _number(value, field, method)
                elif not isinstance(value, str):
                    value = json.dumps(value, sort_keys=True)
                row[field] = value
                sources[field] = f"{rel_path}:{key}"
                break
        if row[field] is None and field in _REQUIRED:
            raise KeyError(f"{rel_path} of {method!r} has none of the keys {list(keys)} needed for {field}; it "
                           f"has {sorted(results)}.")
    row["sources"] = sources
    row["job_wall_s"] = None
    job_time_path = os.path.join(job_workdir, JOB_TIME_NAME)
    if os.path.isfile(job_time_path):
        row["job_wall_s"] = _number(read_json(job_time_path).get("wall_s"), "job wall time", method)
        sources["job_wall_s"] = os.path.relpath(job_time_path, root).replace(os.sep, "/") + ":wall_s"
    if row["kind"] == "classical":
        _add_descriptor_time(row, results, rel_path)
    if row["kind"] == "knn":
        _knn_fields(row, results, rel_path, job_config)
    if row["kind"] == "train" and row["train_count"] is None:
        _train_count(row, job_config)
    return row


def _train_count(row: dict, job_config) -> None:
    """A CNN trains on all of its train split: its size, from the data layer (results.json does not repeat it)."""
    from cnnlab import data

    split = job_config.get("train_split", "train")
    sizes = data.info(job_config.get("dataset"), data_dir=job_config.get("data_dir")).split_sizes
    if split in sizes:
        row["train_count"] = int(sizes[split])
        row["sources"]["train_count"] = f"cnnlab.data.info({job_config.get('dataset')!r}).split_sizes[{split!r}]"


def _knn_fields(row: dict, results: Mapping, rel_path: str, job_config) -> None:
    """kNN's training is storing the training set (fit_time_s) plus choosing (k, metric) by cross-validation
    (cv_time_s); its size is the stored training images (uint8, train_size x H x W x C bytes)."""
    fit, cv = lookup(results, "fit_time_s"), lookup(results, "cv_time_s")
    if fit is not _MISSING and cv is not _MISSING:
        row["train_time_s"] = _number(fit, "fit_time_s", row["method"]) + _number(cv, "cv_time_s", row["method"])
        row["sources"]["train_time_s"] = f"{rel_path}:fit_time_s + cv_time_s"
    k, metric = lookup(results, "k"), lookup(results, "metric")
    if k is not _MISSING and metric is not _MISSING:
        row["chosen"] = f"k={k}, {metric}"
        row["sources"]["chosen"] = f"{rel_path}:k, metric"
    train_size = lookup(results, "train_size")
    if row["model_bytes"] is None and train_size is not _MISSING:
        from cnnlab import data

        height, width, channels = data.info(job_config.get("dataset"), data_dir=job_config.get("data_dir")).image_shape
        row["model_bytes"] = _number(train_size, "train_size", row["method"]) * height * width * channels
        row["sources"]["model_bytes"] = (f"{rel_path}:train_size x {height}x{width}x{channels} bytes "
                                         "(the stored uint8 training images)")


def _add_descriptor_time(row: dict, results: Mapping, rel_path: str) -> None:
    """A descriptor pipeline's training includes computing the descriptors of its training images.

    cnnlab.classical reports the classifier's fit time as ``best.train_time_s`` and the descriptor time per
    1,000 training images separately; when the best pipeline uses descriptors, the comparison's training time is
    fit time + descriptor_s_per_1000_images * train_size / 1000 (its inference time already includes them).
    """
    best = lookup(results, "best.method")
    rows = results.get("classifiers", [])
    features = next((r.get("features") for r in rows if isinstance(r, Mapping) and r.get("method") == best), None)
    per_1000, train_size = lookup(results, "descriptor_s_per_1000_images"), lookup(results, "train_size")
    if features in (None, "pixels") or per_1000 is _MISSING or train_size is _MISSING:
        return
    row["train_time_s"] = row["train_time_s"] + _number(per_1000, "descriptor time", row["method"]) * \
        _number(train_size, "train_size", row["method"]) / 1000.0
    row["sources"]["train_time_s"] = (f"{rel_path}:best.train_time_s + descriptor_s_per_1000_images * "
                                      "train_size / 1000")


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
        size = float(row["model_bytes"])
        unit = "B"
        for unit in ("B", "KiB", "MiB", "GiB"):
            if size < 1024 or unit == "GiB":
                break
            size /= 1024
        parts.append(f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}")
    return ", ".join(parts) if parts else "not reported"


def comparison_markdown(comparison: Mapping) -> str:
    """comparison.md: the table (best accuracy first), the machine, the split and where the numbers come from."""
    rows = sorted(comparison["methods"], key=lambda r: -r["test_accuracy"])
    lines = [f"# Comparison on {comparison['dataset']}", "",
             f"Command: `{comparison['command']}`", "",
             f"Machine: {describe_machine(comparison['machine'])}", "",
             f"Split: {comparison['split_description']}", "",
             "| method | test accuracy | test images | training images | training time | "
             "inference / 1,000 images | size | chosen | ran on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        count = "not reported" if row["test_count"] is None else f"{int(row['test_count']):,}"
        trained = "not reported" if row["train_count"] is None else f"{int(row['train_count']):,}"
        if row["epochs"] is not None:
            trained += f" x {row['epochs']:.3g} epochs"
        lines.append(
            f"| {row['method']} | {100 * row['test_accuracy']:.2f}% | {count} | {trained} | "
            f"{_format_seconds(row['train_time_s'])} | {_format_seconds(row['inference_s_per_1000'])} | "
            f"{_format_size(row)} | {(row['chosen'] or '').replace('|', '/')} | {row['device'] or 'not reported'} |")
    timed = [(r["method"], r["job_wall_s"]) for r in rows if r.get("job_wall_s") is not None]
    per_job = ", ".join(f"{method} {_format_seconds(seconds)}" for method, seconds in timed)
    total = _format_seconds(sum(seconds for _, seconds in timed))
    lines += ["", (f"Wall time of the jobs (start to results: data loading, compilation, evaluation and plots "
                   f"included): {per_job}; total {total}.") if timed else "",
              f"Wall time of this invocation: {_format_seconds(comparison['wall_s'])} "
              f"(jobs run now: {', '.join(r['method'] for r in rows if r['ran_now']) or 'none, all were done'}).",
              "", "Every number is read from the jobs' own results files:", ""]
    for row in rows:
        lines.append(f"- {row['method']}: " + ", ".join(f"{k} from `{v}`" for k, v in row["sources"].items()))
    lines += ["", "![accuracy against training time](comparison.png)", ""]
    return "\n".join(lines)


def plot_comparison(methods: Sequence[Mapping], out_png: str, *, title: str | None = None) -> str:
    """Test accuracy (%) against training time (s, log scale), one labelled point per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not methods:
        raise ValueError("No methods to plot.")
    fig = Figure(figsize=(8, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {"classical": "tab:green", "knn": "tab:orange", "train": "tab:blue"}
    times = [max(float(r["train_time_s"]), 1e-3) for r in methods]  # a log axis needs positive times
    accuracies = [100 * float(r["test_accuracy"]) for r in methods]
    for row, t, a in zip(methods, times, accuracies):
        ax.scatter([t], [a], s=60, color=colours.get(row["kind"], "tab:grey"), zorder=3)
        ax.annotate(f"{row['method']}\n{a:.2f}%", (t, a), textcoords="offset points", xytext=(7, -4), fontsize=9)
    ax.set_xscale("log")
    low, high = min(times), max(times)
    ax.set_xlim(low / 2, high * 6)  # room for the labels on the right
    spread = max(accuracies) - min(accuracies)
    ax.set_ylim(min(accuracies) - max(1.0, 0.15 * spread), max(accuracies) + max(1.0, 0.15 * spread))
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    for kind, colour in colours.items():
        if any(r["kind"] == kind for r in methods):
            ax.scatter([], [], color=colour, label={"train": "CNN", "knn": "kNN"}.get(kind, kind))
    ax.legend(loc="best", fontsize=9)  # the corner with fewest points
    ax.set_title(title or "accuracy against training time")
    fig.savefig(out_png)
    return out_png


# ------------------------------------------------------------------------------------------- run


def _check_config(config) -> None:
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
    for method in methods:
        job = config.jobs[method]
        kind = job.get("kind", "train")
        if kind not in _JOBS:
            raise ValueError(f"Job {method!r} has kind {kind!r}; a comparison runs jobs of kinds {sorted(_JOBS)}.")
        if job.get("dataset", config.dataset) != config.dataset:
            raise ValueError(f"Job {method!r} uses dataset {job.get('dataset')!r}, not the comparison's "
                             f"{config.dataset!r}: every method must see the same data.")


def run(config, workdir: str) -> dict:
    """Runs (or reuses) every job in ``config.methods`` under ``workdir`` and writes the comparison files.

    Returns the comparison dict that is also written to ``workdir/comparison.json``.
    """
    _check_config(config)
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    with open(os.path.join(workdir, CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(_normalised(_to_dict(config)), f, indent=2, sort_keys=True)
    machine = machine_info()
    logging.info("compare: %s on %s", config.dataset, describe_machine(machine))

    rows = []
    for method in config.methods:
        job_workdir = os.path.join(workdir, method)
        ran_now = run_job(method, config.jobs[method], job_workdir)
        row = method_row(method, config.jobs[method], job_workdir, workdir)
        row["ran_now"] = ran_now
        rows.append(row)
        logging.info("compare: %s test accuracy %.4f, training %.1f s", method, row["test_accuracy"],
                     row["train_time_s"])

    comparison = {
        "dataset": config.dataset,
        "split_description": config.get("split_description", ""),
        "command": config.get("command", ""),
        "machine": machine,
        "methods": rows,
        "wall_s": time.perf_counter() - start,
    }
    plot_comparison(rows, os.path.join(workdir, "comparison.png"),
                    title=f"{config.dataset}: test accuracy against training time")
    with open(os.path.join(workdir, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(comparison_markdown(comparison))
    with open(os.path.join(workdir, "comparison.json"), "w", encoding="utf-8") as f:
        json.dump(comparison, f, indent=2)
    print(f"Comparison written to {os.path.join(workdir, 'comparison.md')}")
    for row in sorted(rows, key=lambda r: -r["test_accuracy"]):
        print(f"  {row['method']:<12} {100 * row['test_accuracy']:6.2f}%  train {_format_seconds(row['train_time_s'])}")
    return comparison
