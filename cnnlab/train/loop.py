"""``train_and_evaluate(config, workdir)``: the training loop, and ``evaluate_checkpoint(config, workdir)``.

The loop (one process per host, one program over all devices):
  1. builds the mesh, loads the data, builds the model, the optimizer and the train state directly sharded;
  2. if ``workdir/checkpoints`` holds checkpoints, restores the latest (after checking it belongs to this
     experiment) and continues exactly where it stopped: same epoch, same position in that epoch's shuffled
     order (``start_batch``), same random numbers (they derive from the state's key and the step);
  3. trains epoch by epoch: each dispatch runs up to ``steps_per_dispatch`` optimizer steps (``lax.scan``) on
     stacked uint8 batches that are normalised/augmented on device; running metrics stay on device and are read
     every ``log_every_steps`` (a progress line and a ``metrics.jsonl`` record) and at checkpoints;
  4. evaluates on the whole eval split after every epoch (masked padding, loss, top-1, top-5, per-class
     accuracy, confusion matrix), writes the record, and saves a checkpoint with ``eval_accuracy``; also saves
     every ``checkpoint_every_steps``;
  5. at the end writes ``results.json``, the plots and ``report.md``.

A NaN/inf loss raises ``FloatingPointError`` naming the step (checked at log points and before every save, so
a bad state is never saved); the last good checkpoint stays.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnnlab import data, models, parallel
from cnnlab.data import pipeline
from cnnlab.train import checkpoint as checkpoint_lib
from cnnlab.train import state as state_lib
from cnnlab.train import steps as steps_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REQUIRED_FIELDS = ("dataset", "model", "num_epochs", "num_train_steps", "batch_size", "optimizer", "learning_rate",
                   "schedule", "weight_decay", "seed", "checkpoint_every_steps", "augment", "dtype")
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
# Meta fields that must match between a checkpoint and the run restoring it.
_COMPATIBILITY_FIELDS = ("model", "dataset", "num_classes", "image_shape", "model_overrides")


# ----------------------------------------------------------------------------------------------------------------
# Config checks


def validate_config(config) -> None:
    """Raises a ValueError/TypeError naming the field for every config value training cannot use."""
    if not isinstance(config, (ml_collections.ConfigDict, dict)):
        raise TypeError(f"config must be an ml_collections.ConfigDict, got {type(config).__name__}.")
    missing = [f for f in REQUIRED_FIELDS if f not in config]
    if missing:
        raise ValueError(f"config lacks the field(s) {missing}; start from experiments/configs/common.py.")
    if config.dataset not in data.names():
        raise ValueError(f"Unknown dataset {config.dataset!r}; known datasets: {data.names()}.")
    if config.model not in models.names():
        raise ValueError(f"Unknown model {config.model!r}; known models: {models.names()}.")
    if config.optimizer not in state_lib.OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {config.optimizer!r}; known optimizers: {list(state_lib.OPTIMIZERS)}.")
    if config.schedule not in state_lib.SCHEDULES:
        raise ValueError(f"Unknown schedule {config.schedule!r}; known schedules: {list(state_lib.SCHEDULES)}.")
    if config.dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {config.dtype!r}; use one of {list(DTYPES)} (parameters stay float32).")

    def positive_int(name, allow_zero=False):
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
            raise ValueError(f"config.{name} must be a {'non-negative' if allow_zero else 'positive'} integer, "
                             f"got {value!r}.")

    positive_int("batch_size")
    positive_int("num_epochs", allow_zero=True)
    positive_int("num_train_steps", allow_zero=True)
    positive_int("checkpoint_every_steps", allow_zero=True)
    positive_int("seed", allow_zero=True)
    for name in ("eval_batch_size", "log_every_steps", "steps_per_dispatch", "keep_checkpoints"):
        if name in config:
            positive_int(name)
    for name in ("num_devices", "image_size", "augment_pad"):
        if name in config:
            positive_int(name, allow_zero=True)
    if config.num_epochs == 0 and config.num_train_steps == 0:
        raise ValueError("Set config.num_epochs > 0 or config.num_train_steps > 0 (the latter overrides epochs).")
    if not (isinstance(config.learning_rate, (int, float)) and math.isfinite(config.learning_rate)
            and config.learning_rate > 0):
        raise ValueError(f"config.learning_rate must be a positive number, got {config.learning_rate!r}.")
    if not (isinstance(config.weight_decay, (int, float)) and config.weight_decay >= 0):
        raise ValueError(f"config.weight_decay must be >= 0, got {config.weight_decay!r}.")
    smoothing = config.get("label_smoothing", 0.0)
    if not (isinstance(smoothing, (int, float)) and 0.0 <= smoothing < 1.0):
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {smoothing!r}.")
    clip = config.get("grad_clip_norm", 0.0)
    if not (isinstance(clip, (int, float)) and clip >= 0):
        raise ValueError(f"config.grad_clip_norm must be >= 0 (0 turns clipping off), got {clip!r}.")
    if not isinstance(config.augment, bool):
        raise TypeError(f"config.augment must be True or False, got {config.augment!r}.")


def _model_overrides(config) -> dict:
    overrides = config.get("model_overrides", None)
    if overrides is None:
        return {}
    return overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)


# ----------------------------------------------------------------------------------------------------------------
# Setup shared by training and evaluation


@dataclasses.dataclass
class _Run:
    config: Any
    workdir: str
    mesh: Any
    train: Any
    test: Any
    info: Any
    model: Any
    schedule: Any
    tx: Any
    state: Any
    shardings: Any
    steps_per_epoch: int
    total_steps: int
    image_shape: tuple
    meta: dict
    eval_fn: Any
    is_chief: bool


def _setup(config, workdir: str) -> _Run:
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
    train = data.load(config.dataset, config.get("train_split", "train"), data_dir=data_dir)
    test = data.load(config.dataset, config.get("eval_split", "test"), data_dir=data_dir)
    info = data.info(config.dataset, data_dir=data_dir)  # the prepared data's own mean/std
    steps_per_epoch = pipeline.num_batches(len(train.labels), config.batch_size, drop_remainder=True)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} is larger than the {len(train.labels)} training examples "
                         f"of {config.dataset}:{train.split}; lower it.")
    total_steps = int(config.num_train_steps) if config.num_train_steps > 0 else int(config.num_epochs) * steps_per_epoch

    height, width, channels = train.images.shape[1:]
    size = int(config.get("image_size", 0) or 0)
    if size and (size < height or size < width):
        raise ValueError(f"config.image_size={size} is smaller than the {height}x{width} images; it only pads.")
    image_shape = (size, size, channels) if size else (height, width, channels)

    overrides = _model_overrides(config)
    model = models.get(config.model, num_classes=info.num_classes, dtype=DTYPES[config.dtype], **overrides)
    schedule = state_lib.make_schedule(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    tx = state_lib.make_optimizer(config, schedule)
    state, shardings = state_lib.create_train_state(model, tx, seed=int(config.seed), input_shape=image_shape,
                                                    mesh=mesh)
    meta = {"model": config.model, "dataset": config.dataset, "num_classes": int(info.num_classes),
            "image_shape": list(image_shape), "model_overrides": json.loads(json.dumps(overrides, default=str))}
    metrics_sharding = parallel.replicated(mesh)
    eval_fn = steps_lib.make_eval_fn(metrics_sharding, model=model, num_classes=info.num_classes,
                                     mean=tuple(info.mean), std=tuple(info.std), image_size=image_shape[:2])
    return _Run(config=config, workdir=workdir, mesh=mesh, train=train, test=test, info=info, model=model,
                schedule=schedule, tx=tx, state=state, shardings=shardings, steps_per_epoch=steps_per_epoch,
                total_steps=total_steps, image_shape=image_shape, meta=meta, eval_fn=eval_fn,
                is_chief=jax.process_index() == 0)


def _evaluate(run: _Run, state) -> dict:
    """Whole eval split (last batch padded and masked) -> summarize_eval dict, plus eval_seconds."""
    start = time.perf_counter()
    metrics = jax.device_put(steps_lib.EvalMetrics.zeros(run.info.num_classes), parallel.replicated(run.mesh))
    batch_size = int(run.config.get("eval_batch_size", run.config.batch_size))
    for batch in pipeline.epoch_batches(run.test.images, run.test.labels, batch_size=batch_size, seed=0, epoch=0,
                                        shuffle=False, drop_remainder=False):
        metrics = run.eval_fn(state, parallel.put_host_batch(batch, run.mesh), metrics)
    summary = steps_lib.summarize_eval(metrics, run.info.num_classes)  # waits for the device
    summary["eval_seconds"] = time.perf_counter() - start
    return summary


# ----------------------------------------------------------------------------------------------------------------
# Files in the workdir


def _write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _truncate_metrics(path: str, last_step: int) -> None:
    """Keeps the metrics records up to ``last_step`` (those a resumed run does not redo); drops torn lines."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and int(record.get("step", -1)) <= last_step:
                kept.append(json.dumps(record, sort_keys=True))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _append_metrics(run: _Run, record: dict) -> None:
    if run.is_chief:
        with open(os.path.join(run.workdir, METRICS_FILE), "a") as f:
            f.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")


def _eval_record(summary: dict) -> dict:
    keys = ("eval_loss", "eval_accuracy", "eval_top5_accuracy")
    return {k: summary[k] for k in keys if k in summary}


def _format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


# ----------------------------------------------------------------------------------------------------------------
# Training


def _stack(batches: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _raise_if_nonfinite(run: _Run, host_metrics, checkpoints) -> None:
    bad_step = int(host_metrics.first_nonfinite_step)
    if bad_step != int(np.iinfo(np.int32).max):
        latest = checkpoints.latest_step()
        where = (f"the last good checkpoint, step {latest}, stays in {checkpoints.directory}" if latest is not None
                 else "no checkpoint had been saved yet")
        raise FloatingPointError(
            f"The training loss became NaN or infinite at step {bad_step} (epoch {(bad_step - 1) // run.steps_per_epoch + 1}"
            f"); training stopped and this state was not saved: {where}. Lower config.learning_rate, set "
            "config.grad_clip_norm, or check the data.")


class _QuietOrbax(logging.Filter):
    """Drops Orbax's INFO chatter (several lines per save) from the absl log; its warnings and errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def _quiet_orbax_logs() -> None:
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains ``config.model`` on ``config.dataset`` in ``workdir`` (resuming if it holds checkpoints).

    Returns the final metrics (also in ``workdir/results.json``): eval_loss, eval_accuracy, eval_top5_accuracy
    (more than 5 classes), eval_per_class_accuracy, eval_confusion, train_time_s, inference_s_per_1000,
    num_params, device, steps, epochs, train_images_per_s, report (path of report.md).
    """
    workdir = os.path.abspath(workdir)
    _quiet_orbax_logs()
    run = _setup(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    checkpoints = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                             keep=int(config.get("keep_checkpoints", 2)))
    try:
        return _train(run, checkpoints)
    finally:
        checkpoints.wait()  # a pending asynchronous save (the last good state) always completes
        checkpoints.close()


def _train(run: _Run, checkpoints) -> dict:
    config, state = run.config, run.state
    train_time_before = 0.0
    latest = checkpoints.latest_step()
    if latest is not None:
        state = checkpoints.restore(latest, state, run.shardings, {k: run.meta[k] for k in _COMPATIBILITY_FIELDS})
        train_time_before = float(checkpoints.read_meta(latest).get("train_time_s", 0.0))
    step = int(jax.device_get(state.step))
    if run.is_chief:
        _truncate_metrics(os.path.join(run.workdir, METRICS_FILE), step)
        _write_json(os.path.join(run.workdir, CONFIG_FILE), config.to_dict())
        if latest is not None:
            print(f"Resuming from checkpoint step {step} in {checkpoints.directory}", flush=True)

    replicated = parallel.replicated(run.mesh)
    train_fn = steps_lib.make_train_fn(
        run.shardings, replicated, model=run.model, tx=run.tx, num_classes=run.info.num_classes,
        mean=tuple(run.info.mean), std=tuple(run.info.std), augment=bool(config.augment),
        flip=bool(config.get("augment_flip", True)), pad=int(config.get("augment_pad", 4)), label_smoothing=float(config.get("label_smoothing", 0.0)),
        image_size=run.image_shape[:2])

    spe, total = run.steps_per_epoch, run.total_steps
    num_epochs = -(-total // spe)
    per_dispatch = int(config.get("steps_per_dispatch", 1))
    log_every = int(config.get("log_every_steps", 100))
    ckpt_every = int(config.checkpoint_every_steps)
    zeros = lambda: jax.device_put(steps_lib.TrainMetrics.zeros(), replicated)  # noqa: E731
    metrics = zeros()
    segment_start = time.perf_counter()
    last_log_time, last_log_step = segment_start, step
    last_eval = None

    def elapsed() -> float:
        return train_time_before + time.perf_counter() - segment_start

    def log_train(step: int, epoch: int) -> None:
        nonlocal metrics, last_log_time, last_log_step
        host = jax.device_get(metrics)  # the only place training waits for the device
        _raise_if_nonfinite(run, host, checkpoints)
        now = time.perf_counter()
        images_per_s = (step - last_log_step) * config.batch_size / max(now - last_log_time, 1e-9)
        count = max(int(host.count), 1)
        record = {"step": step, "epoch": step / spe, "train_loss": float(host.loss_sum) / count,
                  "train_accuracy": int(host.correct) / count, "learning_rate": float(run.schedule(step - 1)),
                  "images_per_s": images_per_s, "elapsed_s": elapsed()}
        _append_metrics(run, record)
        if run.is_chief:
            eta = (total - step) * config.batch_size / max(images_per_s, 1e-9)
            print(f"epoch {epoch + 1}/{num_epochs}  step {step}/{total}  loss {record['train_loss']:.4f}  "
                  f"acc {record['train_accuracy']:.4f}  lr {record['learning_rate']:.3g}  "
                  f"{images_per_s:,.0f} img/s  ETA {_format_seconds(eta)}", flush=True)
        metrics = zeros()
        last_log_time, last_log_step = now, step

    while step < total:
        epoch = step // spe
        epoch_end = min((epoch + 1) * spe, total)
        pending: list[dict] = []
        batches = pipeline.epoch_batches(run.train.images, run.train.labels, batch_size=config.batch_size,
                                         seed=int(config.seed), epoch=epoch, start_batch=step - epoch * spe)
        for batch in batches:
            pending.append(batch)
            next_step = step + len(pending)
            at_log = next_step % log_every == 0
            at_ckpt = ckpt_every > 0 and next_step % ckpt_every == 0
            if not (len(pending) == per_dispatch or next_step == epoch_end or at_log or at_ckpt):
                continue
            stacked = parallel.put_host_batch(_stack(pending), run.mesh, leading_unsharded_axes=1)
            state, metrics = train_fn(state, stacked, metrics)
            step, pending = next_step, []
            if step == epoch_end:
                break
            if at_log or at_ckpt:
                log_train(step, epoch)
            if at_ckpt:
                checkpoints.save(step, state, dict(run.meta, train_time_s=elapsed()))
        if step != epoch_end:
            raise RuntimeError(f"The data pipeline ended epoch {epoch} after step {step}, before step {epoch_end}.")
        log_train(step, epoch)
        last_eval = _evaluate(run, state)
        record = dict({"step": step, "epoch": step / spe}, **_eval_record(last_eval))
        _append_metrics(run, record)
        if run.is_chief:
            print(f"epoch {epoch + 1}/{num_epochs}  step {step}/{total}  eval_loss {last_eval['eval_loss']:.4f}  "
                  f"eval_accuracy {last_eval['eval_accuracy']:.4f}", flush=True)
        checkpoints.save(step, state, dict(run.meta, train_time_s=elapsed()),
                         metrics={"eval_accuracy": float(last_eval["eval_accuracy"]),
                                  "eval_loss": float(last_eval["eval_loss"])})

    train_time_s = elapsed()
    if last_eval is None:  # resumed after the last step: evaluate the restored final state
        last_eval = _evaluate(run, state)
    # Inference time: one more pass over the eval split with an already compiled eval step.
    timed = _evaluate(run, state)
    results = dict(last_eval)
    results.pop("eval_seconds", None)
    results.update({
        "train_time_s": train_time_s,
        "inference_s_per_1000": timed["eval_seconds"] / max(timed["eval_count"], 1) * 1000.0,
        "num_params": state_lib.num_params(state.params),
        "device": parallel.device_description(run.mesh),
        "steps": total, "epochs": total / spe,
        "train_images_per_s": total * config.batch_size / max(train_time_s, 1e-9),
        "model": config.model, "dataset": config.dataset,
    })
    if run.is_chief:
        _write_json(os.path.join(run.workdir, RESULTS_FILE), results)
        if config.get("report", True):
            results["report"] = write_run_report(run, state, results)
            _write_json(os.path.join(run.workdir, RESULTS_FILE), results)
        print(f"Final: eval_accuracy {results['eval_accuracy']:.4f}  eval_loss {results['eval_loss']:.4f}  "
              f"train_time {_format_seconds(train_time_s)}  results: {os.path.join(run.workdir, RESULTS_FILE)}",
              flush=True)
        if "report" in results:
            print(f"Report: {results['report']}", flush=True)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Report


def feature_maps_of(run: _Run, state, image: np.ndarray) -> dict[str, np.ndarray]:
    """The sown ``intermediates`` (after each convolutional stage) for one uint8 image [H, W, C]."""
    x = steps_lib.preprocess(jnp.asarray(image[None]), None, mean=tuple(run.info.mean), std=tuple(run.info.std),
                             augment=False, image_size=run.image_shape[:2])
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    _, collections = run.model.apply(variables, x, train=False, mutable=["intermediates"])
    from cnnlab.report import feature_maps

    return feature_maps.stages_from_intermediates(jax.device_get(collections.get("intermediates", {})))


def write_run_report(run: _Run, state, results: dict) -> str:
    """Curves, confusion matrix, first-layer filters, feature maps of the first test image, and report.md."""
    from cnnlab.report import confusion, curves, feature_maps, filters, run_report

    workdir = run.workdir
    names = list(run.info.class_names)
    plots = {
        "Loss and accuracy": curves.plot_curves(os.path.join(workdir, METRICS_FILE),
                                                os.path.join(workdir, "curves.png"),
                                                title=f"{run.config.model} on {run.config.dataset}"),
        "Confusion matrix (eval split)": confusion.plot_confusion(np.asarray(results["eval_confusion"]), names,
                                                                  os.path.join(workdir, "confusion.png")),
        "First-layer filters": filters.plot_filters(np.asarray(jax.device_get(models.first_conv_kernel(state.params))),
                                                    os.path.join(workdir, "filters.png")),
    }
    maps = feature_maps_of(run, state, run.test.images[0])
    if maps:
        plots["Feature maps of the first eval image"] = feature_maps.plot_feature_maps(
            maps, os.path.join(workdir, "feature_maps.png"), image=run.test.images[0],
            title=f"true class: {names[int(run.test.labels[0])]}")
    scalars = {k: v for k, v in results.items() if isinstance(v, (int, float, str)) and k != "report"}
    return run_report.write_report(workdir, config=run.config, final_metrics=scalars, plots=plots,
                                   per_class_accuracy=results["eval_per_class_accuracy"], class_names=names)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation of a saved run


def evaluate_checkpoint(config, workdir: str) -> dict:
    """Evaluates the best checkpoint (highest eval_accuracy; else the latest) in ``workdir`` on the eval split.

    Returns the eval metrics plus ``step``; writes them to ``workdir/eval_results.json``.
    Raises FileNotFoundError when the workdir has no checkpoint, CheckpointError when it does not fit ``config``.
    """
    workdir = os.path.abspath(workdir)
    _quiet_orbax_logs()
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No checkpoints in {directory}: train first with the same config and --workdir.")
    run = _setup(config, workdir)
    checkpoints = checkpoint_lib.Checkpoints(directory, keep=int(config.get("keep_checkpoints", 2)))
    try:
        step = checkpoints.best_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoints in {directory}: train first with the same config and --workdir.")
        state = checkpoints.restore(step, run.state, run.shardings, {k: run.meta[k] for k in _COMPATIBILITY_FIELDS})
    finally:
        checkpoints.close()
    summary = _evaluate(run, state)
    summary["step"] = int(step)
    if run.is_chief:
        _write_json(os.path.join(workdir, "eval_results.json"), summary)
        print(f"Checkpoint step {step}: eval_accuracy {summary['eval_accuracy']:.4f}  eval_loss "
              f"{summary['eval_loss']:.4f}  ({os.path.join(workdir, 'eval_results.json')})", flush=True)
    return summary
