"""Everything a job writes into its workdir, in one place: the lock, config.json, metrics.jsonl, results.json.

    wd = Workdir("runs/lenet5")            # checks the path first: a file, or a directory we cannot write, fails here
    with wd.locked():                      # one writer per workdir, for the job's whole life
        wd.write_config(config)
        wd.metrics.append({"step": 100, "train_loss": 0.41})
        wd.write_results(results_record(kind="train", dataset="mnist", ...))

The results schema (``SCHEMA_VERSION``) is the same for every job kind, so ``compare`` and any reader read it
directly, with no guessing:

    {"schema_version": 1, "kind": "train" | "knn" | "classical" | "compare", "dataset": str,
     "splits":  {"train": int, "validation": int | None, "test": int},      # images each stage used
     "test":    {"accuracy": float, "count": int, "top5_accuracy": float | None, "loss": float | None},
     "timing":  {"train_s": float, "compile_s": float | None, "inference_s_per_1000": float | None,
                 "wall_s": float | None},
     "model":   {"name": str, "num_params": int | None, "bytes": int | None,
                 "params_sha256": str | None (trained models: tree_sha256 of the final parameters and BN statistics)},
     "chosen":  {...},  "chosen_text": str,                                  # what model selection picked
     "machine": {"cpu_model", "usable_cores", "logical_cores", "memory_gib", "jax_backend", "jax_devices",
                 "process_count"},
     "software": {"python", "jax", "jaxlib", "flax", "optax", "numpy", "sklearn", "cnnlab"},
     "details": {...},                                                       # kind-specific extras
     "finished_at": "2026-12-01T15:04:05Z",
     "seeds": {...}}                                     # optional: only in the aggregate record of a seeds run

A run over several seeds (``config.seeds`` = N > 1, ``cnnlab.jobs.seeds``) writes one ordinary record per seed in
``seed_<n>/results.json`` and, in the workdir itself, an aggregate record of the same schema (same ``kind``;
``test`` holds the mean over seeds, ``model.params_sha256`` is None) with one extra, optional section:

    "seeds": {"n": int, "values": [int, ...],               # the seeds, config.seed + 0..N-1, in workdir order
              "workdirs": ["seed_0", ...],                  # relative to the workdir
              "stacked": bool,                              # trained in one vmapped program (train jobs only)
              "metrics": {name: {"n", "mean", "std", "min", "max", "ci_low", "ci_high", "confidence",
                                 "deterministic"}},        # cnnlab.report.stats.Summary of each metric
              "per_seed": {name: [float | None, ...]},      # the values the summaries come from, seed by seed
              "accuracy_bootstrap": {"low", "high", "confidence", "resamples", "test_images"} | None,
                                                            # over the test images, from predictions.npy
              "params_sha256": [str | None, ...]}           # each seed's final parameters

The section is optional, so records without it (every single run) keep ``schema_version`` 1.

``train_s`` is the time spent training (for kNN: storing the data plus choosing k and the metric; for the
classical pipeline: computing the training descriptors plus fitting the chosen classifier), without
compilation where the job can tell them apart (``compile_s``).

Only process 0 of a multi-host run writes (``Workdir(..., is_chief=False)`` turns every write into a no-op);
every file is written to a temporary name and renamed, so a killed job never leaves half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import socket
import time
from collections.abc import Iterator, Mapping
from typing import Any

SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
PREDICTIONS_FILE = "predictions.npy"   # int32 [test images]: the final model's predicted class of each test image
TEST_LABELS_FILE = "test_labels.npy"   # int32 [test images]: their true classes, same order
KINDS = ("train", "knn", "classical", "compare")

_SOFTWARE = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax", "numpy": "numpy",
             "sklearn": "scikit-learn", "cnnlab": "cnnlab"}


class WorkdirError(RuntimeError):
    """The workdir cannot be used (not a directory, not writable, locked by another job, wrong contents)."""


class WorkdirBusy(WorkdirError):
    """Another live job holds the workdir's lock."""


# ------------------------------------------------------------------------------------------------ JSON


def to_jsonable(value: Any) -> Any:
    """Plain JSON values from numpy scalars/arrays, tuples, ConfigDicts and dataclasses."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, jax arrays
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_json(path: str, value: Any) -> None:
    """Writes ``value`` as indented JSON atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(value), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> dict:
    """A JSON object from ``path``, with short errors for a missing or malformed file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    with open(path, encoding="utf-8") as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it or rerun the job in a new workdir.") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(value).__name__}.")
    return value


# ------------------------------------------------------------------------------------------------ machine


def machine_info() -> dict:
    """The machine this process runs on: CPU model and vector flags, cores, memory, jax backend and devices."""
    import jax  # here, not at the top: reading a workdir (compare, tests) must not start a jax backend

    cpu_model, flags, memory_gib = platform.processor() or platform.machine(), [], None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu_model in ("", platform.machine(), platform.processor()):
                    cpu_model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    flags = [f for f in ("avx2", "fma", "avx512f", "avx512_fp16", "avx512_bf16", "amx_tile")
                             if f in present]
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_gib = round(int(line.split()[1]) / 2**20, 1)
                    break
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    devices = jax.devices()
    return {"cpu_model": cpu_model, "cpu_flags": flags, "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores, "memory_gib": memory_gib, "jax_backend": jax.default_backend(),
            "jax_devices": f"{len(devices)} x {devices[0].device_kind}", "process_count": jax.process_count()}


def describe_machine(machine: Mapping) -> str:
    """One line, the same format everywhere: ``AMD EPYC 7B13 [avx2 fma] (2 cores, 23.4 GiB), jax cpu: 8 x cpu``."""
    if not machine:
        return "not reported"
    flags = f" [{' '.join(machine['cpu_flags'])}]" if machine.get("cpu_flags") else ""
    memory = f", {machine['memory_gib']} GiB" if machine.get("memory_gib") else ""
    cores = f"{machine.get('usable_cores', '?')} cores"
    processes = f", {machine['process_count']} processes" if machine.get("process_count", 1) > 1 else ""
    return (f"{machine.get('cpu_model', '?')}{flags} ({cores}{memory}), "
            f"jax {machine.get('jax_backend', '?')}: {machine.get('jax_devices', '?')}{processes}")


def software_versions() -> dict:
    """Versions of Python and the libraries that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for key, distribution in _SOFTWARE.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


# ------------------------------------------------------------------------------------------------ results schema


def _number(value, name: str, *, integer: bool = False, optional: bool = False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
        raise TypeError(f"results field {name} must be a number, got {value!r}.")
    value = value.item() if hasattr(value, "item") else value
    if not math.isfinite(value):
        raise ValueError(f"results field {name} must be finite, got {value!r}.")
    if integer:
        if int(value) != value:
            raise ValueError(f"results field {name} must be an integer, got {value!r}.")
        return int(value)
    return float(value)


def results_record(*, kind: str, dataset: str, train_count: int, test_count: int, test_accuracy: float,
                   train_s: float, validation_count: int | None = None, test_top5_accuracy: float | None = None,
                   test_loss: float | None = None, compile_s: float | None = None,
                   inference_s_per_1000: float | None = None, wall_s: float | None = None,
                   model_name: str = "", num_params: int | None = None, model_bytes: int | None = None,
                   params_sha256: str | None = None, chosen: Mapping | None = None, chosen_text: str = "",
                   details: Mapping | None = None, machine: Mapping | None = None,
                   seeds: Mapping | None = None) -> dict:
    """A results.json record of schema ``SCHEMA_VERSION``, checked field by field (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown job kind {kind!r}; known kinds: {list(KINDS)}.")
    accuracy = _number(test_accuracy, "test.accuracy")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"results field test.accuracy must be a fraction in [0, 1], got {accuracy!r}.")
    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "dataset": str(dataset),
        "splits": {"train": _number(train_count, "splits.train", integer=True),
                   "validation": _number(validation_count, "splits.validation", integer=True, optional=True),
                   "test": _number(test_count, "splits.test", integer=True)},
        "test": {"accuracy": accuracy, "count": _number(test_count, "test.count", integer=True),
                 "top5_accuracy": _number(test_top5_accuracy, "test.top5_accuracy", optional=True),
                 "loss": _number(test_loss, "test.loss", optional=True)},
        "timing": {"train_s": _number(train_s, "timing.train_s"),
                   "compile_s": _number(compile_s, "timing.compile_s", optional=True),
                   "inference_s_per_1000": _number(inference_s_per_1000, "timing.inference_s_per_1000",
                                                   optional=True),
                   "wall_s": _number(wall_s, "timing.wall_s", optional=True)},
        "model": {"name": str(model_name), "num_params": _number(num_params, "model.num_params", integer=True,
                                                                 optional=True),
                  "bytes": _number(model_bytes, "model.bytes", integer=True, optional=True),
                  "params_sha256": params_sha256},
        "chosen": to_jsonable(dict(chosen or {})),
        "chosen_text": str(chosen_text),
        "machine": dict(machine) if machine is not None else machine_info(),
        "software": software_versions(),
        "details": to_jsonable(dict(details or {})),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if seeds is not None:
        record["seeds"] = to_jsonable(dict(seeds))
        _check_seeds_section(record["seeds"], "results")
    return record


def _check_seeds_section(section, source: str) -> None:
    """The optional ``seeds`` section of an aggregate record (see the module docstring)."""
    if not isinstance(section, Mapping):
        raise ValueError(f"{source}: field 'seeds' must be an object, got {section!r}.")
    n = _number(section.get("n"), f"{source}: seeds.n", integer=True)
    values = section.get("values")
    if n < 1 or not isinstance(values, list) or len(values) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{source}: seeds.values must list the {n} integer seeds, got {values!r}.")
    for name in ("workdirs", "params_sha256"):
        if not isinstance(section.get(name), list) or len(section[name]) != n:
            raise ValueError(f"{source}: seeds.{name} must be a list of {n} entries, got {section.get(name)!r}.")
    metrics = section.get("metrics")
    if not isinstance(metrics, Mapping) or not isinstance(metrics.get("test_accuracy"), Mapping):
        raise ValueError(f"{source}: seeds.metrics must hold at least the test_accuracy summary.")
    for name, summary in metrics.items():
        for field in ("mean", "std", "min", "max"):
            _number(summary.get(field) if isinstance(summary, Mapping) else None,
                    f"{source}: seeds.metrics.{name}.{field}")


def tree_sha256(tree) -> str:
    """SHA-256 of a pytree of arrays: every leaf's path, dtype, shape and bytes, in path order.

    Equal hashes mean bit-identical parameters (the determinism contract's check); one changed bit changes it.
    """
    import jax  # the job drivers have it loaded; this module's other helpers do not need it
    import numpy

    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = numpy.ascontiguousarray(numpy.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


_REQUIRED = {"schema_version": int, "kind": str, "dataset": str, "splits": dict, "test": dict, "timing": dict,
             "model": dict, "chosen": dict, "chosen_text": str, "machine": dict, "software": dict, "details": dict,
             "finished_at": str}


def check_results(results: Mapping, source: str = "results") -> dict:
    """Checks a results record against the schema; returns it as a dict. Raises ValueError naming the field."""
    if not isinstance(results, Mapping):
        raise ValueError(f"{source} must be a JSON object.")
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{source} has schema_version {version!r}, this cnnlab reads {SCHEMA_VERSION}: it was "
                         "written by another version; rerun the job in a new workdir.")
    for name, kind in _REQUIRED.items():
        if not isinstance(results.get(name), kind):
            raise ValueError(f"{source}: field {name!r} must be a {kind.__name__}, got {results.get(name)!r}.")
    for section, fields in (("splits", ("train", "test")), ("test", ("accuracy", "count")), ("timing", ("train_s",))):
        for name in fields:
            _number(results[section].get(name), f"{source}: {section}.{name}")
    if "seeds" in results:
        _check_seeds_section(results["seeds"], source)
    return dict(results)


# ------------------------------------------------------------------------------------------------ metrics.jsonl


class MetricsLog:
    """``metrics.jsonl``: one JSON record per line, each with an integer ``step``.

    ``append`` adds a record (flushed, so the curves can be drawn while the run goes on); ``rewrite_until(step)``
    makes the file exactly the records a resumed run keeps: those with step <= ``step``, one per (step, kind of
    record), ordered by step, torn or malformed lines dropped.
    """

    def __init__(self, path: str, *, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def append(self, record: Mapping) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")

    def read(self) -> list[dict]:
        """The valid records in file order (torn or malformed lines skipped)."""
        if not os.path.exists(self.path):
            return []
        records = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    records.append(record)
        return records

    def rewrite_until(self, last_step: int) -> list[dict]:
        """Keeps the records up to ``last_step``, de-duplicated and ordered by step; returns them."""
        if not self.enabled:
            return []
        latest: dict[tuple, dict] = {}
        for record in self.read():
            if record["step"] <= last_step:
                latest[(record["step"], tuple(sorted(record)))] = record  # the last of duplicates wins
        kept = sorted(latest.values(), key=lambda r: (r["step"], "eval_accuracy" in r))
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        os.replace(tmp, self.path)
        return kept


# ------------------------------------------------------------------------------------------------ the workdir


def _holder_text(info: Mapping) -> str:
    return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
            f"{', command: ' + info['command'] if info.get('command') else ''}")


class Workdir:
    """A job's output directory.

    Args:
      path: the directory (created if missing). A path that is a file, or that cannot be created or written,
        raises ``WorkdirError`` at once, before any data is loaded.
      is_chief: False on processes other than 0 of a multi-host run: they write nothing and take no lock.
    """

    def __init__(self, path: str | os.PathLike, *, is_chief: bool = True):
        self.path = os.path.abspath(os.fspath(path))
        self.is_chief = is_chief
        self._lock_fd: int | None = None
        if is_chief:
            self._check_usable()
        self.metrics = MetricsLog(os.path.join(self.path, METRICS_FILE), enabled=is_chief)

    def _check_usable(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise WorkdirError(f"--workdir {self.path} is a file, not a directory; choose another path.")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise WorkdirError(f"--workdir {self.path} cannot be created ({e.strerror}); choose a path you can "
                               "write to.") from e
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise WorkdirError(f"--workdir {self.path} is not writable by this user; choose a path you can write "
                               "to.")

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # -- lock ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, command: str = "") -> Iterator[Workdir]:
        """Holds an exclusive lock on the workdir for the block (one writer per workdir).

        The lock is a ``flock`` on ``.lock``: the kernel releases it when its process dies, however it dies, so
        a lock left by a dead process never blocks. A second job on a locked workdir raises ``WorkdirBusy`` at
        once, naming the holder (pid, host, start time). Re-entrant within one process.
        """
        if not self.is_chief or self._lock_fd is not None:
            yield self
            return
        path = self.file(LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = {}
            with contextlib.suppress(OSError, ValueError):
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirBusy(f"{self.path} is in use by another job ({_holder_text(holder)}). Wait for it to "
                                  "finish, stop it, or use another --workdir.") from None
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._lock_fd = fd
        try:
            yield self
        finally:
            self._lock_fd = None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the flock

    # -- files ----------------------------------------------------------------------------------------------

    def write_config(self, config) -> None:
        if self.is_chief:
            write_json(self.file(CONFIG_FILE), config)

    def read_config(self) -> dict | None:
        path = self.file(CONFIG_FILE)
        return read_json(path) if os.path.isfile(path) else None

    def write_results(self, results: Mapping) -> str:
        """Checks ``results`` against the schema and writes results.json; returns its path."""
        checked = check_results(results)
        if self.is_chief:
            write_json(self.file(RESULTS_FILE), checked)
        return self.file(RESULTS_FILE)

    def read_results(self) -> dict | None:
        """The checked results.json, or None when the job has not finished here."""
        path = self.file(RESULTS_FILE)
        return check_results(read_json(path), path) if os.path.isfile(path) else None

    def write_predictions(self, predictions, labels) -> str:
        """Writes predictions.npy and test_labels.npy (int32 [N] each, the same test images in the same order):
        what the paired statistics (McNemar, bootstrap intervals) need. Returns the predictions' path."""
        import numpy

        predictions, labels = numpy.asarray(predictions), numpy.asarray(labels)
        if predictions.shape != labels.shape or predictions.ndim != 1:
            raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be 1-D and of one "
                             "length (one entry per test image).")
        if self.is_chief:
            for name, array in ((PREDICTIONS_FILE, predictions), (TEST_LABELS_FILE, labels)):
                tmp = self.file(f"{name}.tmp{os.getpid()}.npy")
                numpy.save(tmp, array.astype(numpy.int32))
                os.replace(tmp, self.file(name))
        return self.file(PREDICTIONS_FILE)

    def read_predictions(self):
        """(predictions, labels), int32 [N] each, or None when the job wrote none here."""
        import numpy

        paths = [self.file(PREDICTIONS_FILE), self.file(TEST_LABELS_FILE)]
        if not all(os.path.isfile(p) for p in paths):
            return None
        predictions, labels = (numpy.load(p, allow_pickle=False) for p in paths)
        if predictions.shape != labels.shape or predictions.ndim != 1:
            raise ValueError(f"{paths[0]} and {paths[1]} do not pair up (shapes {predictions.shape} and "
                             f"{labels.shape}); rerun the job in a new workdir.")
        return predictions, labels

    def write_text(self, name: str, text: str) -> str:
        path = self.file(name)
        if self.is_chief:
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        return path
