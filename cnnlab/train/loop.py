"""The training loop: set up a run, restore its latest checkpoint, train and evaluate, evaluate a checkpoint.

The loop owns the model, the data order, the device program and the checkpoints (``<workdir>/checkpoints``);
it writes no other file. Everything else a job writes (config.json, metrics.jsonl, results.json, the report) is
the job's, through ``cnnlab.jobs.workdir``: the loop gets a metrics sink (``append(record)``) and returns a
``TrainOutcome``. ``cnnlab.jobs.train_and_evaluate(config, workdir)`` is the whole job.

    run = setup(config)                                          # mesh, data, model, optimizer, sharded state
    with Checkpoints(directory) as checkpoints:
        state, resumed = restore_latest(run, checkpoints)        # refuses a checkpoint of a different run
        outcome = train(run, state, checkpoints, sink, resumed)  # epochs, evaluation, checkpoints, signals

How a run continues: a checkpoint records every config field that changes what the run computes
(``run_fingerprint``); restoring it under a config that differs in any of them raises ``ResumeMismatch``
naming the fields, old and new values. The fields in ``SAFE_ON_RESUME`` may change. The restored state holds
the step, so the run continues exactly where it stopped: same epoch, same position in that epoch's shuffled
order (recorded as ``position`` in the checkpoint's metadata; ``feeds`` serves the batches from there, in memory
or streamed), same random numbers (they derive from the state's key and the step).

SIGTERM (what SLURM, Kubernetes and preemptible VMs send) and SIGINT stop the loop at the next dispatch: it
saves a checkpoint of the current step, waits until it is on disk, and raises ``TrainingInterrupted`` (the
runner prints one line and exits 128 + signal number). A NaN/inf loss raises ``FloatingPointError`` naming the
step; the bad state is never saved.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnlab import data, models, parallel
from cnnlab.data import demo
from cnnlab.native import conv as native_conv
from cnnlab.report import run_report
from cnnlab.train import checkpoint as checkpoint_lib
from cnnlab.train import feeds
from cnnlab.train import pretrained
from cnnlab.train import state as state_lib
from cnnlab.train import steps as steps_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REQUIRED_FIELDS = ("dataset", "model", "num_epochs", "num_train_steps", "batch_size", "optimizer", "learning_rate",
                   "schedule", "weight_decay", "seed", "checkpoint_every_steps", "augment", "dtype")
# Config fields that may differ between a checkpoint and the run resuming it: they change how the run is logged,
# saved, laid out on devices or evaluated in batches, never what it computes.
SAFE_ON_RESUME = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size", "report",
                  "num_devices", "steps_per_dispatch", "data_dir", "multihost", "data_workers", "data_threads",
                  "prefetch_batches",
                  # How many seeds run and how (a single run's checkpoint never depends on them; a stacked
                  # checkpoint checks its seeds itself), and the choice of GPU kernels (as num_devices: the
                  # same computation).
                  "seeds", "seeds_stacked", "deterministic")
# The fields an evaluation of a saved checkpoint must share with the run that wrote it.
_MODEL_FIELDS = ("model", "dataset", "num_classes", "image_shape", "model_overrides")


class ResumeMismatch(checkpoint_lib.CheckpointError):
    """The workdir holds a run whose config differs from this one in a field that changes what it computes."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training after saving a checkpoint of the current step."""

    def __init__(self, signal_name: str, step: int, total: int, directory: str):
        self.signal_name, self.step, self.total, self.directory = signal_name, step, total, directory
        self.exit_code = 128 + int(getattr(signal, signal_name))
        super().__init__(f"Stopped by {signal_name} at step {step} of {total}; checkpoint saved in {directory}. "
                         "Rerun the same command to resume from it.")


class MetricsSink(Protocol):
    def append(self, record: Mapping) -> None: ...


# ----------------------------------------------------------------------------------------------------------------
# Config checks


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
        and math.isfinite(value)


def validate_config(config) -> None:
    """Raises a ValueError/TypeError naming the field for every config value training cannot use.

    Names (dataset, model, optimizer, schedule, dtype) are checked by the registries and factories that use
    them (``data.load``, ``models.get``, ``state.make_optimizer``/``make_schedule``), once, when the run is set up.
    """
    if not isinstance(config, (ml_collections.ConfigDict, dict)):
        raise TypeError(f"config must be an ml_collections.ConfigDict, got {type(config).__name__}.")
    missing = [f for f in REQUIRED_FIELDS if f not in config]
    if missing:
        raise ValueError(f"config lacks the field(s) {missing}; start from experiments/configs/common.py.")

    def integer(name, minimum=1):
        value = config.get(name)
        if not _is_int(value) or value < minimum:
            kind = "a positive" if minimum == 1 else "a non-negative"
            raise ValueError(f"config.{name} must be {kind} integer, got {value!r}.")

    def number(name, low, high=math.inf, *, low_open=False, high_open=True):
        value = config.get(name)
        if value is None:
            return
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if not _is_number(value) or below or above:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise ValueError(f"config.{name} must be a number in {interval}, got {value!r}.")

    for name in ("batch_size",):
        integer(name)
    for name in ("num_epochs", "num_train_steps", "checkpoint_every_steps", "seed"):
        integer(name, minimum=0)
    for name in ("eval_batch_size", "log_every_steps", "steps_per_dispatch", "keep_checkpoints"):
        if name in config:
            integer(name)
    for name in ("num_devices", "image_size", "augment_pad", "image_resize"):
        if name in config:
            integer(name, minimum=0)
    if config.num_epochs == 0 and config.num_train_steps == 0:
        raise ValueError("Set config.num_epochs > 0 or config.num_train_steps > 0 (the latter overrides epochs).")
    number("learning_rate", 0.0, low_open=True)
    number("weight_decay", 0.0)
    number("label_smoothing", 0.0, 1.0)
    number("grad_clip_norm", 0.0)
    number("warmup_epochs", 0.0)
    number("momentum", 0.0, 1.0)
    number("lr_decay_factor", 0.0, low_open=True)
    if config.dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {config.dtype!r}; use one of {list(DTYPES)} (parameters stay float32).")
    if not isinstance(config.augment, bool):
        raise TypeError(f"config.augment must be True or False, got {config.augment!r}.")


def model_overrides(config) -> dict:
    overrides = config.get("model_overrides", None)
    if overrides is None:
        return {}
    return overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)


def run_fingerprint(config) -> dict[str, Any]:
    """The config fields that change what a training run computes (all but ``SAFE_ON_RESUME``), flattened."""
    flat = run_report.flatten_config(config)
    return {k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v)
            for k, v in flat.items() if k.split(".")[0] not in SAFE_ON_RESUME}


def fingerprint_differences(saved: Mapping, current: Mapping) -> list[str]:
    """Human-readable differences between a checkpoint's fingerprint and this run's."""
    missing = "(not set)"
    differences = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key, missing), current.get(key, missing)
        if old != new:
            differences.append(f"{key}: {old!r} in the checkpoint, {new!r} now")
    return differences


# ----------------------------------------------------------------------------------------------------------------
# Setup shared by training and evaluation


@dataclasses.dataclass
class Run:
    """Everything a run needs that is not the train state: config, mesh, data, model, optimizer, programs."""

    config: Any
    mesh: Any
    feed: feeds.Feed  # the host batches: in memory or streamed
    info: Any
    model: Any
    schedule: Any
    tx: Any
    state: Any
    shardings: Any
    steps_per_epoch: int
    total_steps: int
    image_shape: tuple  # (H, W, C) the model sees
    meta: dict
    eval_fn: Any
    is_chief: bool
    pad_shape: tuple = ()  # (H, W, C) after zero-padding (config.image_size), before config.image_resize

    @property
    def num_epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)


def setup(config) -> Run:
    """Checks the config, builds the mesh, loads the data, builds the model, optimizer and sharded train state."""
    validate_config(config)
    parallel.maybe_initialize_distributed(config)
    num_devices = int(config.get("num_devices", 0) or 0)
    if num_devices > jax.device_count():
        raise ValueError(f"config.num_devices={num_devices} but only {jax.device_count()} devices exist.")
    mesh = parallel.make_data_mesh(jax.devices()[:num_devices] if num_devices else None)
    parallel.check_batch_divisible(config.batch_size, mesh, "batch_size")
    eval_batch_size = int(config.get("eval_batch_size", config.batch_size))
    parallel.check_batch_divisible(eval_batch_size, mesh, "eval_batch_size")

    data_dir = config.get("data_dir") or None
    if config.dataset == demo.NAME:  # made from installed data on first use, like digits
        demo.ensure_prepared(data_dir)
    info = data.info(config.dataset, data_dir=data_dir)  # the prepared data's own mean/std
    feed = feeds.make_feed(config, info=info, data_dir=data_dir)  # in memory, or streamed (encoded images)
    steps_per_epoch = feed.steps_per_epoch
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} is larger than the {feed.num_train} training "
                         f"examples of {config.dataset}:{config.get('train_split', 'train')}; lower it.")
    total_steps = int(config.num_train_steps) if config.num_train_steps > 0 else int(config.num_epochs) * steps_per_epoch

    height, width, channels = feed.image_shape
    size = int(config.get("image_size", 0) or 0)
    if size and (size < height or size < width):
        raise ValueError(f"config.image_size={size} is smaller than the {height}x{width} images; it only pads.")
    pad_shape = (size, size, channels) if size else (height, width, channels)
    resize = int(config.get("image_resize", 0) or 0)
    image_shape = (resize, resize, channels) if resize else pad_shape  # what the model sees

    overrides = model_overrides(config)
    model = models.get(config.model, num_classes=info.num_classes, dtype=DTYPES[config.dtype], **overrides)
    if getattr(model, "conv_impl", None) == "auto":
        # oneDNN's CPU convolutions where they can run and the mesh is one device (cnnlab.native.conv.select)
        model = model.clone(conv_impl=native_conv.select("auto", devices=mesh.size))
    schedule = state_lib.make_schedule(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    tx = state_lib.make_optimizer(config, schedule)
    state, shardings = state_lib.create_train_state(model, tx, seed=int(config.seed), input_shape=image_shape,
                                                    mesh=mesh)
    if config.get("init_from"):
        state = pretrained.initialize_from(config, state, model=model, mesh=mesh, shardings=shardings)
    meta = {"model": config.model, "dataset": config.dataset, "num_classes": int(info.num_classes),
            "image_shape": list(image_shape), "model_overrides": json.loads(json.dumps(overrides, default=str)),
            "config": json.loads(json.dumps(run_fingerprint(config), default=str)), "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            # What predictions and exports need to apply this run's preprocessing without the prepared data.
            "mean": [float(v) for v in info.mean], "std": [float(v) for v in info.std],
            "class_names": list(info.class_names), "streamed": feed.streaming,
            "encoded_images": None in tuple(info.image_shape), "input_shape": list(feed.image_shape),
            "pad_shape": list(pad_shape)}
    eval_fn = steps_lib.make_eval_fn(parallel.replicated(mesh), model=model, num_classes=info.num_classes,
                                     mean=tuple(info.mean), std=tuple(info.std), image_size=pad_shape[:2],
                                     resize=image_shape[:2])
    return Run(config=config, mesh=mesh, feed=feed, info=info, model=model,
               schedule=schedule, tx=tx, state=state, shardings=shardings, steps_per_epoch=steps_per_epoch,
               total_steps=total_steps, image_shape=image_shape, pad_shape=pad_shape, meta=meta, eval_fn=eval_fn,
               is_chief=jax.process_index() == 0)


def evaluate(run: Run, state) -> dict:
    """Whole eval split (last batch padded and masked) -> summarize_eval dict, plus eval_seconds."""
    start = time.perf_counter()
    metrics = jax.device_put(steps_lib.EvalMetrics.zeros(run.info.num_classes), parallel.replicated(run.mesh))
    for batch in run.feed.eval_batches():
        metrics = run.eval_fn(state, parallel.put_host_batch(batch, run.mesh), metrics)
    summary = steps_lib.summarize_eval(metrics, run.info.num_classes)  # waits for the device
    summary["eval_seconds"] = time.perf_counter() - start
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


class _QuietOrbax(logging.Filter):
    """Drops Orbax's INFO chatter (several lines per save) from the absl log, and its warning for every
    mid-epoch checkpoint (saved without an eval metric on purpose: only epoch ends are ranked); its other
    warnings and errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        return record.levelno >= logging.WARNING and "did not provide metrics" not in record.getMessage()


def open_checkpoints(run: Run, directory: str) -> checkpoint_lib.Checkpoints:
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())
    return checkpoint_lib.Checkpoints(directory, keep=int(run.config.get("keep_checkpoints", 2)))


@dataclasses.dataclass
class Resumed:
    """What the restored checkpoint says about the time already spent (zeros for a fresh run)."""

    step: int = 0
    train_s: float = 0.0
    compile_s: float = 0.0
    eval_s: float = 0.0


def restore_latest(run: Run, checkpoints: checkpoint_lib.Checkpoints):
    """(state, Resumed): the latest checkpoint's state, or the fresh state when there is none.

    Raises ``ResumeMismatch`` when the checkpoint belongs to a different run (fields named), and
    ``CheckpointError`` naming the damaged step and the newest intact one when the latest cannot be read.
    """
    latest = checkpoints.latest_step()
    if latest is None:
        return run.state, Resumed()
    meta = checkpoints.read_meta(latest)
    saved = meta.get("config")
    if saved is not None:
        differences = fingerprint_differences(saved, run.meta["config"])
        if differences:
            raise ResumeMismatch(
                f"{os.path.dirname(checkpoints.directory)} holds a run with a different config: "
                f"{'; '.join(differences[:6])}{'; ...' if len(differences) > 6 else ''}. Rerun with the checkpoint's "
                "values (they are in config.json there), or use a new --workdir for the changed run. Fields that may "
                f"change on resume: {', '.join(SAFE_ON_RESUME)}.")
    state = checkpoints.restore_or_explain(latest, run.state, run.shardings,
                                           {k: run.meta[k] for k in _MODEL_FIELDS})
    step = int(jax.device_get(state.step))
    position = meta.get("position")
    if position is not None and feeds.Position(**position) != feeds.Position.of_step(step, run.steps_per_epoch):
        raise checkpoint_lib.CheckpointError(
            f"Checkpoint step {step} in {checkpoints.directory} says its data position is {position}, but step {step} "
            f"is batch {step % run.steps_per_epoch} of epoch {step // run.steps_per_epoch} for this run; the "
            "checkpoint was written by a run with another data size. Use a new --workdir.")
    return state, Resumed(step=step, train_s=float(meta.get("train_time_s", 0.0)),
                          compile_s=float(meta.get("compile_time_s", 0.0)), eval_s=float(meta.get("eval_time_s", 0.0)))


# ----------------------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class TrainOutcome:
    """What a finished training run returns to its job.

    final_eval: the last evaluation (summarize_eval dict). train_s: time in training steps over all segments of
    the run, compilation and evaluation excluded; compile_s: first calls of each compiled program; eval_s: the
    per-epoch evaluations. inference_s_per_1000: a timed pass over the eval split with a compiled program.
    """

    state: Any
    final_eval: dict
    train_s: float
    compile_s: float
    eval_s: float
    inference_s_per_1000: float
    steps: int
    epochs: float


def _stack(batches: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a number of seconds."""
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class _StopSignals:
    """Turns SIGTERM/SIGINT into a flag the loop polls between dispatches (main thread only; restored after)."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def train(run: Run, state, checkpoints: checkpoint_lib.Checkpoints, sink: MetricsSink, resumed: Resumed,
          print_progress: bool | None = None) -> TrainOutcome:
    """Trains from ``state`` (step ``resumed.step``) to ``run.total_steps``; evaluates after every epoch.

    Records go to ``sink.append``: a training record every ``log_every_steps`` (train_loss, train_accuracy,
    learning_rate, images_per_s) and an evaluation record per epoch (eval_loss, eval_accuracy, ...).
    """
    config = run.config
    chief = run.is_chief if print_progress is None else print_progress
    replicated = parallel.replicated(run.mesh)
    train_fn = steps_lib.make_train_fn(
        run.shardings, replicated, model=run.model, tx=run.tx, num_classes=run.info.num_classes,
        mean=tuple(run.info.mean), std=tuple(run.info.std), augment=bool(config.augment) and run.feed.device_augment,
        flip=bool(config.get("augment_flip", True)), pad=int(config.get("augment_pad", 4)),
        label_smoothing=float(config.get("label_smoothing", 0.0)), image_size=run.pad_shape[:2],
        resize=run.image_shape[:2])

    step, spe, total = resumed.step, run.steps_per_epoch, run.total_steps
    per_dispatch = int(config.get("steps_per_dispatch", 1))
    log_every = int(config.get("log_every_steps", 100))
    ckpt_every = int(config.checkpoint_every_steps)
    zeros = lambda: jax.device_put(steps_lib.TrainMetrics.zeros(), replicated)  # noqa: E731
    metrics = zeros()
    clock = {"train": 0.0, "compile": 0.0, "eval": 0.0}
    compiled_lengths: set[int] = set()
    window = {"start": time.perf_counter(), "step": step, "excluded": 0.0}
    seg_train = {"steps": 0, "seconds": 0.0}  # this process's training steps/time: the ETA's rate
    last_eval = None

    def meta_now() -> dict:
        return dict(run.meta, position=feeds.Position.of_step(step, spe).as_dict(), train_time_s=resumed.train_s + clock["train"],
                    compile_time_s=resumed.compile_s + clock["compile"], eval_time_s=resumed.eval_s + clock["eval"])

    def close_window(now: float) -> float:
        """Pure training seconds since the window opened (compilation and evaluation taken out)."""
        seconds = max(now - window["start"] - window["excluded"], 1e-9)
        clock["train"] += seconds
        seg_train["steps"] += step - window["step"]
        seg_train["seconds"] += seconds
        return seconds

    def save(**kwargs) -> None:
        """A checkpoint of the current step; its host copy is excluded from the training time."""
        began = time.perf_counter()
        checkpoints.save(step, state, meta_now(), **kwargs)
        window["excluded"] += time.perf_counter() - began

    def log_train(epoch: int) -> None:
        nonlocal metrics
        host = jax.device_get(metrics)  # the only place training waits for the device
        _raise_if_nonfinite(run, host, checkpoints, epoch)
        now = time.perf_counter()
        seconds = close_window(now)
        images_per_s = (step - window["step"]) * config.batch_size / seconds
        count = max(int(host.count), 1)
        record = {"step": step, "epoch": step / spe, "train_loss": float(host.loss_sum) / count,
                  "train_accuracy": int(host.correct) / count, "learning_rate": float(run.schedule(step - 1)),
                  "images_per_s": images_per_s, "elapsed_s": resumed.train_s + clock["train"]}
        sink.append(record)
        if chief:
            rate = seg_train["seconds"] / max(seg_train["steps"], 1)
            print(f"epoch {epoch + 1}/{run.num_epochs}  step {step}/{total}  loss {record['train_loss']:.4f}  "
                  f"acc {record['train_accuracy']:.4f}  lr {record['learning_rate']:.3g}  "
                  f"{images_per_s:,.0f} img/s  ETA {format_duration((total - step) * rate)}", flush=True)
        metrics = zeros()
        window.update(start=time.perf_counter(), step=step, excluded=0.0)

    with _StopSignals() as stop:
        while step < total:
            epoch = step // spe
            epoch_end = min((epoch + 1) * spe, total)
            pending: list[dict] = []
            batches = run.feed.train_batches(epoch, start_batch=step - epoch * spe)
            for batch in batches:
                pending.append(batch)
                next_step = step + len(pending)
                at_log = next_step % log_every == 0
                at_ckpt = ckpt_every > 0 and next_step % ckpt_every == 0
                if not (len(pending) == per_dispatch or next_step == epoch_end or at_log or at_ckpt
                        or stop.received):
                    continue
                stacked = parallel.put_host_batch(_stack(pending), run.mesh, leading_unsharded_axes=1)
                if len(pending) not in compiled_lengths:  # first call of this program: compile, timed apart
                    began = time.perf_counter()
                    state, metrics = jax.block_until_ready(train_fn(state, stacked, metrics))
                    spent = time.perf_counter() - began
                    clock["compile"] += spent
                    window["excluded"] += spent
                    compiled_lengths.add(len(pending))
                else:
                    state, metrics = train_fn(state, stacked, metrics)
                step, pending = next_step, []
                if stop.received and step != epoch_end:
                    log_train(epoch)
                    save()
                    checkpoints.wait()
                    raise TrainingInterrupted(stop.received, step, total, checkpoints.directory)
                if step == epoch_end:
                    break
                if at_log or at_ckpt:
                    log_train(epoch)
                if at_ckpt:
                    save()
            if step != epoch_end:
                raise RuntimeError(f"The data pipeline ended epoch {epoch} after step {step}, before step {epoch_end}.")
            log_train(epoch)
            began = time.perf_counter()
            last_eval = evaluate(run, state)
            clock["eval"] += time.perf_counter() - began
            window["start"] = time.perf_counter()
            record = {"step": step, "epoch": step / spe,
                      **{k: last_eval[k] for k in ("eval_loss", "eval_accuracy", "eval_top5_accuracy") if k in last_eval}}
            sink.append(record)
            if chief:
                print(f"epoch {epoch + 1}/{run.num_epochs}  step {step}/{total}  eval_loss {last_eval['eval_loss']:.4f}"
                      f"  eval_accuracy {last_eval['eval_accuracy']:.4f}", flush=True)
            save(metrics={"eval_accuracy": float(last_eval["eval_accuracy"]), "eval_loss": float(last_eval["eval_loss"])})
            if stop.received:
                checkpoints.wait()
                if step < total:
                    raise TrainingInterrupted(stop.received, step, total, checkpoints.directory)

    if last_eval is None:  # resumed after the last step: evaluate the restored final state
        last_eval = evaluate(run, state)
    timed = evaluate(run, state)  # inference time: one more pass over the eval split, compiled
    last_eval.pop("eval_seconds", None)
    return TrainOutcome(state=state, final_eval=last_eval, train_s=resumed.train_s + clock["train"],
                        compile_s=resumed.compile_s + clock["compile"], eval_s=resumed.eval_s + clock["eval"],
                        inference_s_per_1000=timed["eval_seconds"] / max(timed["eval_count"], 1) * 1000.0,
                        steps=total, epochs=total / spe)


def _raise_if_nonfinite(run: Run, host_metrics, checkpoints, epoch: int) -> None:
    bad_step = int(host_metrics.first_nonfinite_step)
    if bad_step != int(np.iinfo(np.int32).max):
        latest = checkpoints.latest_step()
        where = (f"the last good checkpoint, step {latest}, stays in {checkpoints.directory}" if latest is not None
                 else "no checkpoint had been saved yet")
        raise FloatingPointError(
            f"The training loss became NaN or infinite at step {bad_step} (epoch {epoch + 1}); training stopped "
            f"and this state was not saved: {where}. Lower config.learning_rate, set config.grad_clip_norm, or "
            "check the data.")


# ----------------------------------------------------------------------------------------------------------------
# Inspection of a trained state (for the report and for predictions)


def feature_maps_of(run: Run, state, image: np.ndarray) -> dict[str, np.ndarray]:
    """The sown ``intermediates`` (after each convolutional stage) for one uint8 image [H, W, C]."""
    from cnnlab.report import feature_maps  # only the report needs it

    x = steps_lib.preprocess(jnp.asarray(image[None]), None, mean=tuple(run.info.mean), std=tuple(run.info.std),
                             augment=False, image_size=run.pad_shape[:2], resize=run.image_shape[:2])
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    _, collections = run.model.apply(variables, x, train=False, mutable=["intermediates"])
    return feature_maps.stages_from_intermediates(jax.device_get(collections.get("intermediates", {})))


def restore_best(run: Run, checkpoints: checkpoint_lib.Checkpoints) -> tuple[Any, int, dict | None]:
    """(state, step, metrics) of the best checkpoint by eval_accuracy (the latest when none carries metrics)."""
    step = checkpoints.best_step()
    if step is None:
        raise FileNotFoundError(f"No checkpoints in {checkpoints.directory}: train first with the same config and "
                                "--workdir.")
    state = checkpoints.restore_or_explain(step, run.state, run.shardings, {k: run.meta[k] for k in _MODEL_FIELDS})
    return state, step, checkpoints.metrics(step)
