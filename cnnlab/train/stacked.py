"""N seeds of one training run trained together: states stacked on a leading seed axis, one loop for all seeds.

    srun = setup(config, seeds=[0, 1, 2, 3, 4])                  # config.seed == seeds[0]
    with loop.open_checkpoints(srun.run, "runs/x/checkpoints") as checkpoints:
        state, resumed = restore_latest(srun, checkpoints)           # the stacked state, or a fresh one
        outcome = train(srun, state, checkpoints, sinks, resumed)     # sinks: one metrics sink per seed
    outcome.per_seed[i]                                          # a loop.TrainOutcome, as a single run returns

What is stacked: the TrainState (params, batch statistics, optimizer state, step, rng: every leaf gets a leading
axis of length N), the running metrics, and each step's batches ``[N, B, H, W, C]``: seed i's batch is exactly the
one its single run would take at that step (its feed with its own seed: the order
``pipeline.epoch_permutation(N_examples, seed=seed_i, epoch)``). Seed i's state is created by
``state.create_train_state(seed=seed_i)``, as its single run does, and every step runs ``steps.train_step`` for
each seed, in one of three ways (``STRATEGIES``):

- "vmap": one program, ``jax.vmap(steps.train_step)``: batched convolutions and matrix products, the form an
  accelerator runs best (one small model leaves most of it idle). They may sum in another order than the single
  run's: on LeNet-5/digits after 20 steps every parameter is within 6e-8 (absolute, float32) of the single run's
  (tests/train/test_stacked.py checks <= 1e-6). The default on accelerators.
- "unrolled": one program holding the single step N times, one per seed's slice, each copy ordered after the
  previous one (an optimization barrier): bit-identical to the single runs (tested).
- "interleaved": the single run's own jitted step called once per seed (N dispatches per step, between one split
  and one stack program): bit-identical to the single runs (tested), and on CPU it costs what N runs cost. The
  default on CPU.

Measured on CPU (experiments/bench/seeds.py: LeNet-5/MNIST, batch 128, 5 seeds x 100 steps, 3 rounds, 2 Intel
Xeon (Sapphire Rapids class) cores, load average 2-5 from other jobs), speed relative to 5 sequential runs:
interleaved 0.97x (median; 0.93x best round: the split/stack around the steps), vmap 0.32x (median; 0.40x best:
XLA:CPU runs the batched (grouped) convolutions badly); unrolled, measured under a load of 9-13, 0.39x without the
ordering barrier and 0.64x with it. On 2 CPU cores one LeNet-5 step already keeps the cores busy, so one program
has nothing to fill; ``config.seeds_stacked`` is off by default. A full 5-seed LeNet-5/MNIST run (8 epochs)
stacked with the interleaved strategy ended with exactly the parameter hashes of the 5 sequential runs. The
stacked run is bit-reproducible on its own either way: same config and seeds, same hashes; a resumed stacked run
ends with the uninterrupted one's parameter hashes (tested).

Checkpoints: one per step of the whole stacked state, in the seeds run's ``workdir/checkpoints`` (the loop's
Orbax ``Checkpoints``, unchanged); its meta carries the seeds and the config fingerprint, so a resume under other
seeds or another config is refused with the differences named. ``restore_latest``
restores it like ``loop.restore_latest`` restores a single run's, against the stacked state and shardings.
Steps per dispatch are always 1 here (``config.steps_per_dispatch`` does not change the arithmetic).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnlab import parallel
from cnnlab.train import feeds, loop
from cnnlab.train import pretrained
from cnnlab.train import state as state_lib
from cnnlab.train import steps as steps_lib


STRATEGIES = ("vmap", "unrolled", "interleaved")


@dataclasses.dataclass
class StackedRun:
    """``run``: the loop's Run of the first seed, with the stacked state, its shardings and the stacked meta;
    ``seeds``: the N seeds, in stacking order."""

    run: loop.Run
    seeds: list[int]
    feeds: list[feeds.Feed]
    train_fn: Any
    eval_fn: Any
    strategy: str


@dataclasses.dataclass
class StackedOutcome:
    """The final stacked state and, per seed, the ``loop.TrainOutcome`` its single run would return (times are
    the stacked program's, shared by all seeds)."""

    state: Any
    per_seed: list[loop.TrainOutcome]


def stack(trees: Sequence[Any]) -> Any:
    """Pytrees of one structure -> one pytree whose leaves have a new leading axis (typed keys included)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Seed ``index``'s slice of a stacked pytree."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


def _check_seeds(config, seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}.")
    if int(config.seed) != seeds[0]:
        raise ValueError(f"config.seed ({config.seed}) must be the first stacked seed ({seeds[0]}).")
    return seeds


def setup(config, seeds: Sequence[int], strategy: str | None = None) -> StackedRun:
    """The loop's setup for ``config`` (its seed the first of ``seeds``), with one state per seed, stacked.

    ``strategy``: "vmap" or "unrolled" (how the seeds' steps share the program); None: ``default_strategy()``.
    """
    seeds = _check_seeds(config, seeds)
    base = loop.setup(config)
    states = [base.state]
    for seed in seeds[1:]:
        state, _ = state_lib.create_train_state(base.model, base.tx, seed=seed, input_shape=base.image_shape,
                                                mesh=base.mesh)
        if config.get("init_from"):
            state = pretrained.initialize_from(config, state, model=base.model, mesh=base.mesh,
                                               shardings=base.shardings)
        states.append(state)
    replicated = parallel.replicated(base.mesh)
    stacked_state = jax.device_put(stack(states), replicated)
    shardings = jax.tree.map(lambda _: replicated, stacked_state)
    meta = dict(base.meta, seeds=seeds, stacked=True)
    run = dataclasses.replace(base, state=stacked_state, shardings=shardings, meta=meta)

    info = run.info
    step = functools.partial(
        steps_lib.train_step, model=run.model, tx=run.tx, num_classes=info.num_classes, mean=tuple(info.mean),
        std=tuple(info.std), augment=bool(config.augment) and run.feed.device_augment,
        flip=bool(config.get("augment_flip", True)),
        pad=int(config.get("augment_pad", 4)), label_smoothing=float(config.get("label_smoothing", 0.0)),
        image_size=run.pad_shape[:2], resize=run.image_shape[:2])
    evaluate_one = functools.partial(steps_lib.eval_step, model=run.model, num_classes=info.num_classes,
                                     mean=tuple(info.mean), std=tuple(info.std), image_size=run.pad_shape[:2],
                                     resize=run.image_shape[:2])
    strategy = strategy or default_strategy()
    if strategy == "vmap":
        per_seed_step = jax.vmap(step)
        # One eval batch, shared by every seed (in_axes None): the test images are the same for all.
        per_seed_eval = jax.vmap(evaluate_one, in_axes=(0, None, 0))
    elif strategy in ("unrolled", "interleaved"):
        per_seed_step = _unrolled(step, len(seeds), shared=())
        per_seed_eval = _unrolled(evaluate_one, len(seeds), shared=(1,))
    else:
        raise ValueError(f"Unknown stacking strategy {strategy!r}; known: {list(STRATEGIES)}.")
    train_fn = jax.jit(per_seed_step, donate_argnums=(0, 2), out_shardings=(shardings, replicated))
    if strategy == "interleaved":
        train_fn = _interleaved(step, len(seeds), base.shardings, replicated)
    eval_fn = jax.jit(per_seed_eval, donate_argnums=(2,), out_shardings=replicated)
    return StackedRun(run=run, seeds=seeds, feeds=[_seed_feed(run.feed, seed) for seed in seeds], train_fn=train_fn,
                      eval_fn=eval_fn, strategy=strategy)


def default_strategy() -> str:
    """"interleaved" on CPU, "vmap" on accelerators (see the module docstring for the measurements)."""
    return "interleaved" if jax.default_backend() == "cpu" else "vmap"


def _interleaved(step, count: int, single_shardings, replicated):
    """``(stacked state, stacked batch, stacked metrics) -> (state, metrics)`` that runs the single run's own
    jitted step once per seed (one split and one stack program around them): N dispatches per step, each the
    single run's program, so every seed is bit-identical to its single run and costs what it costs alone."""
    single_fn = jax.jit(step, donate_argnums=(0, 2), out_shardings=(single_shardings, replicated))
    split = jax.jit(lambda tree: [unstack(tree, i) for i in range(count)])
    join = jax.jit(lambda trees: stack(trees))

    def train_fn(state, batch, metrics):
        outputs = [single_fn(*inputs) for inputs in zip(split(state), split(batch), split(metrics))]
        return join([o[0] for o in outputs]), join([o[1] for o in outputs])

    return train_fn


def _unrolled(fn, count: int, *, shared: tuple[int, ...]):
    """``fn`` applied to each seed's slice of its stacked arguments, one after another in one program, outputs
    stacked: what ``jax.vmap(fn)`` computes, but as ``count`` separate copies of the single-seed computation
    (arguments at positions ``shared`` are passed whole to every seed)."""

    def each(*args):
        outputs = []
        for i in range(count):
            inputs = [arg if position in shared else unstack(arg, i) for position, arg in enumerate(args)]
            if outputs:  # seed i starts after seed i-1 is done: the copies run one after another, as N runs do
                outputs[-1], inputs = jax.lax.optimization_barrier((outputs[-1], inputs))
            outputs.append(fn(*inputs))
        return stack(outputs)

    return each


def _seed_feed(feed: feeds.Feed, seed: int) -> feeds.Feed:
    """``feed`` with its data order (and host augmentation, when streamed) drawn from ``seed``; the data are
    shared, not copied."""
    seeded = copy.copy(feed)
    seeded.seed = int(seed)
    return seeded


def restore_latest(srun: StackedRun, checkpoints) -> tuple[Any, loop.Resumed]:
    """(stacked state, Resumed) from the latest checkpoint, or the fresh stacked state when there is none.

    ``loop.restore_latest``'s checks for a stacked state: a checkpoint of another run (other seeds included: the
    fingerprint holds ``seed`` and ``seeds``) raises ``loop.ResumeMismatch`` naming the fields; a damaged one
    ``CheckpointError`` naming the newest intact step.
    """
    run = srun.run
    latest = checkpoints.latest_step()
    if latest is None:
        return run.state, loop.Resumed()
    meta = checkpoints.read_meta(latest)
    differences = loop.fingerprint_differences(meta.get("config", {}), run.meta["config"])
    if meta.get("seeds") != srun.seeds:
        differences.append(f"stacked seeds: {meta.get('seeds')!r} in the checkpoint, {srun.seeds!r} now")
    if differences:
        raise loop.ResumeMismatch(
            f"{os.path.dirname(checkpoints.directory)} holds a stacked run with a different config: "
            f"{'; '.join(differences[:6])}. Rerun with the checkpoint's values (config.json there), or use a new "
            "--workdir.")
    expected = {k: run.meta[k] for k in ("model", "dataset", "num_classes", "image_shape", "model_overrides")}
    state = checkpoints.restore_or_explain(latest, run.state, run.shardings, expected)
    steps = np.asarray(jax.device_get(state.step))
    if (steps != steps[0]).any():
        raise loop.ResumeMismatch(f"Checkpoint step {latest} in {checkpoints.directory} holds seeds at different "
                                  f"steps {steps.tolist()}; it was not written by a stacked run. Use a new --workdir.")
    return state, loop.Resumed(step=int(steps[0]), train_s=float(meta.get("train_time_s", 0.0)),
                               compile_s=float(meta.get("compile_time_s", 0.0)),
                               eval_s=float(meta.get("eval_time_s", 0.0)))


def _zeros(tree_fn, count: int, sharding):
    return jax.device_put(jax.tree.map(lambda x: jnp.broadcast_to(x, (count, *x.shape)), tree_fn()), sharding)


def evaluate(srun: StackedRun, state) -> list[dict]:
    """Every seed on the whole eval split: one ``steps.summarize_eval`` dict per seed, plus eval_seconds (all)."""
    run = srun.run
    start = time.perf_counter()
    metrics = _zeros(lambda: steps_lib.EvalMetrics.zeros(run.info.num_classes), len(srun.seeds),
                     parallel.replicated(run.mesh))
    for batch in run.feed.eval_batches():
        metrics = srun.eval_fn(state, parallel.put_host_batch(batch, run.mesh), metrics)
    host = jax.device_get(metrics)
    seconds = time.perf_counter() - start
    return [dict(steps_lib.summarize_eval(unstack(host, i), run.info.num_classes), eval_seconds=seconds)
            for i in range(len(srun.seeds))]


def predict_test_split(run: loop.Run, state, *, stacked: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) on the eval split: int32 [N] (or [seeds, N] for a ``stacked`` state), int32 [N].

    The class each test image gets from ``state`` (top-1 of the logits, eval preprocessing): what McNemar's test
    and the bootstrap intervals need. Works for single runs (``loop.Run`` and its state) and stacked ones.
    """
    info = run.info

    def predict(one_state, images):
        x = steps_lib.preprocess(images, None, mean=tuple(info.mean), std=tuple(info.std), augment=False,
                                 image_size=run.pad_shape[:2], resize=run.image_shape[:2])
        variables = {"params": one_state.params}
        if one_state.batch_stats:
            variables["batch_stats"] = one_state.batch_stats
        logits = run.model.apply(variables, x, train=False)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        return jnp.argmax(logits, -1).astype(jnp.int32)

    program = jax.jit(jax.vmap(predict, in_axes=(0, None)) if stacked else predict)
    chunks, labels = [], []
    for batch in run.feed.eval_batches():
        predicted = np.asarray(jax.device_get(program(state, parallel.put_host_batch(batch, run.mesh)["image"])))
        chunks.append(predicted[..., batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
    return np.concatenate(chunks, axis=-1).astype(np.int32), np.concatenate(labels).astype(np.int32)


def train(srun: StackedRun, state, checkpoints, sinks: Sequence[loop.MetricsSink], resumed: loop.Resumed,
          print_progress: bool | None = None) -> StackedOutcome:
    """Trains the stacked ``state`` from ``resumed.step`` to the end; evaluates every seed after every epoch.

    ``sinks[i]`` gets seed i's records, the same ones (same steps, same keys) its single run would log: a training
    record every ``log_every_steps`` and at epoch ends, an evaluation record per epoch. Checkpoints (every
    ``checkpoint_every_steps`` and at epoch ends, ranked by the seeds' mean eval accuracy), SIGTERM/SIGINT and
    non-finite losses are handled as in ``loop.train``.
    """
    run, seeds = srun.run, srun.seeds
    if len(sinks) != len(seeds):
        raise ValueError(f"one metrics sink per seed: {len(sinks)} sinks for {len(seeds)} seeds.")
    config, count = run.config, len(seeds)
    chief = run.is_chief if print_progress is None else print_progress
    replicated = parallel.replicated(run.mesh)
    step, spe, total = resumed.step, run.steps_per_epoch, run.total_steps
    log_every = int(config.get("log_every_steps", 100))
    ckpt_every = int(config.checkpoint_every_steps)
    zeros = lambda: _zeros(steps_lib.TrainMetrics.zeros, count, replicated)  # noqa: E731
    metrics = zeros()
    clock = {"train": 0.0, "compile": 0.0, "eval": 0.0}
    window = {"start": time.perf_counter(), "step": step, "excluded": 0.0}
    compiled = False
    last_evals = None

    def meta_now() -> dict:
        return dict(run.meta, position=feeds.Position.of_step(step, spe).as_dict(),
                    train_time_s=resumed.train_s + clock["train"],
                    compile_time_s=resumed.compile_s + clock["compile"], eval_time_s=resumed.eval_s + clock["eval"])

    def save(**kwargs) -> None:
        began = time.perf_counter()
        checkpoints.save(step, state, meta_now(), **kwargs)
        window["excluded"] += time.perf_counter() - began

    def log_train(epoch: int) -> None:
        nonlocal metrics
        host = jax.device_get(metrics)
        bad = np.asarray(host.first_nonfinite_step)
        if (bad != np.iinfo(np.int32).max).any():
            which = int(np.argmin(bad))
            latest = checkpoints.latest_step()
            raise FloatingPointError(
                f"The training loss of seed {seeds[which]} became NaN or infinite at step {int(bad[which])} (epoch "
                f"{epoch + 1}); training stopped and this state was not saved (last good checkpoint: "
                f"{latest if latest is not None else 'none'}). Lower config.learning_rate or set "
                "config.grad_clip_norm.")
        now = time.perf_counter()
        seconds = max(now - window["start"] - window["excluded"], 1e-9)
        clock["train"] += seconds
        images_per_s = (step - window["step"]) * config.batch_size * count / seconds  # all seeds' images
        learning_rate = float(run.schedule(step - 1))
        losses = []
        for i, sink in enumerate(sinks):
            seen = max(int(host.count[i]), 1)
            record = {"step": step, "epoch": step / spe, "train_loss": float(host.loss_sum[i]) / seen,
                      "train_accuracy": int(host.correct[i]) / seen, "learning_rate": learning_rate,
                      "images_per_s": images_per_s, "elapsed_s": resumed.train_s + clock["train"]}
            sink.append(record)
            losses.append(record["train_loss"])
        if chief:
            print(f"epoch {epoch + 1}/{run.num_epochs}  step {step}/{total}  loss {np.mean(losses):.4f} (mean of "
                  f"{count} seeds)  lr {learning_rate:.3g}  {images_per_s:,.0f} img/s", flush=True)
        metrics = zeros()
        window.update(start=time.perf_counter(), step=step, excluded=0.0)

    with loop._StopSignals() as stop:  # noqa: SLF001 - the loop's own signal handling, shared on purpose
        while step < total:
            epoch = step // spe
            epoch_end = min((epoch + 1) * spe, total)
            per_seed_batches = [feed.train_batches(epoch, start_batch=step - epoch * spe) for feed in srun.feeds]
            for batches in zip(*per_seed_batches):
                batch = parallel.put_host_batch({k: np.stack([b[k] for b in batches]) for k in batches[0]},
                                                run.mesh, leading_unsharded_axes=1)
                if not compiled:  # the first call compiles: timed apart
                    began = time.perf_counter()
                    state, metrics = jax.block_until_ready(srun.train_fn(state, batch, metrics))
                    spent = time.perf_counter() - began
                    clock["compile"] += spent
                    window["excluded"] += spent
                    compiled = True
                else:
                    state, metrics = srun.train_fn(state, batch, metrics)
                step += 1
                at_log = step % log_every == 0
                at_ckpt = ckpt_every > 0 and step % ckpt_every == 0
                if stop.received and step != epoch_end:
                    log_train(epoch)
                    save()
                    checkpoints.wait()
                    raise loop.TrainingInterrupted(stop.received, step, total, checkpoints.directory)
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
            last_evals = evaluate(srun, state)
            clock["eval"] += time.perf_counter() - began
            window["start"] = time.perf_counter()
            for sink, summary in zip(sinks, last_evals):
                sink.append({"step": step, "epoch": step / spe,
                             **{k: summary[k] for k in ("eval_loss", "eval_accuracy", "eval_top5_accuracy")
                                if k in summary}})
            mean_accuracy = float(np.mean([e["eval_accuracy"] for e in last_evals]))
            if chief:
                each = " ".join(f"{e['eval_accuracy']:.4f}" for e in last_evals)
                print(f"epoch {epoch + 1}/{run.num_epochs}  step {step}/{total}  eval_accuracy {mean_accuracy:.4f} "
                      f"(mean of {count} seeds: {each})", flush=True)
            save(metrics={"eval_accuracy": mean_accuracy,
                          "eval_loss": float(np.mean([e["eval_loss"] for e in last_evals]))})
            if stop.received:
                checkpoints.wait()
                if step < total:
                    raise loop.TrainingInterrupted(stop.received, step, total, checkpoints.directory)

    if last_evals is None:  # resumed after the last step: evaluate the restored final state
        last_evals = evaluate(srun, state)
    timed = evaluate(srun, state)[0]  # inference time: one more pass, compiled, all seeds at once
    per_1000 = timed["eval_seconds"] / max(timed["eval_count"] * count, 1) * 1000.0
    outcomes = []
    for i, summary in enumerate(last_evals):
        summary.pop("eval_seconds", None)
        outcomes.append(loop.TrainOutcome(
            state=unstack(state, i), final_eval=summary, train_s=resumed.train_s + clock["train"],
            compile_s=resumed.compile_s + clock["compile"], eval_s=resumed.eval_s + clock["eval"],
            inference_s_per_1000=per_1000, steps=total, epochs=total / spe))
    return StackedOutcome(state=state, per_seed=outcomes)
