"""The training and evaluation steps: pure functions of (state, batch), jitted by ``make_*_fn``.

Batches arrive on device as uint8 images (a quarter of float32's bytes to transfer); the cast, normalisation and
augmentation run on device inside the jitted step. A training dispatch runs ``k`` optimizer steps at once with
``lax.scan`` over a stack of ``k`` batches (``[k, B, H, W, C]``), unrolled on CPU (see ``train_steps``); the
arithmetic of every step is the same whatever ``k`` is. Whether k > 1 pays depends on the model: on 2 CPU cores,
batch 128, ResNet-20 trains at 265 img/s with k = 10 vs 232 with k = 1, LeNet-5 at 23,000 vs 27,000 (ten copies
of its small step schedule worse than one), so the LeNet-5 configs use k = 1.

Metrics are running sums kept on device (``TrainMetrics``/``EvalMetrics``); the loop reads them only at log
points, so no step waits for the host.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cnnlab.data import pipeline
from cnnlab.train.state import TrainState

_NO_NONFINITE = jnp.iinfo(jnp.int32).max


@flax.struct.dataclass
class TrainMetrics:
    """Running training sums since the last log point (all scalars, on device).

    loss_sum: sum over examples of the per-example loss. correct: number of top-1 hits. count: examples seen.
    first_nonfinite_step: the first optimizer step (1-based, the value of ``state.step`` after it) whose loss was
    NaN or inf, or int32 max when none was.
    """

    loss_sum: jax.Array
    correct: jax.Array
    count: jax.Array
    first_nonfinite_step: jax.Array

    @classmethod
    def zeros(cls) -> "TrainMetrics":
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                   jnp.full((), _NO_NONFINITE, jnp.int32))


@flax.struct.dataclass
class EvalMetrics:
    """Evaluation sums over the masked (real) examples.

    loss_sum, correct (top-1), correct_top5, count: scalars. confusion: int32 [num_classes, num_classes], rows the
    true class, columns the predicted class.
    """

    loss_sum: jax.Array
    correct: jax.Array
    correct_top5: jax.Array
    count: jax.Array
    confusion: jax.Array

    @classmethod
    def zeros(cls, num_classes: int) -> "EvalMetrics":
        # Distinct buffers for every field: they are donated to the eval step.
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                   jnp.zeros((), jnp.int32), jnp.zeros((num_classes, num_classes), jnp.int32))


def cross_entropy(logits: jax.Array, labels: jax.Array, *, num_classes: int, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy in float32 (nats). logits [B, K], labels int [B] -> [B]."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def pad_to_size(images: jax.Array, image_size: Sequence[int] | None) -> jax.Array:
    """Zero-pads [B, H, W, C] images evenly on both sides to ``image_size`` (H', W') >= (H, W); None: unchanged."""
    if image_size is None:
        return images
    dh, dw = image_size[0] - images.shape[1], image_size[1] - images.shape[2]
    if dh < 0 or dw < 0:
        raise ValueError(f"image_size {tuple(image_size)} is smaller than the images {images.shape[1:3]}.")
    if dh == dw == 0:
        return images
    return jnp.pad(images, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)))


def preprocess(images: jax.Array, key: jax.Array | None, *, mean: Sequence[float], std: Sequence[float],
               augment: bool, pad: int = 4, flip: bool = True, image_size: Sequence[int] | None = None,
               resize: Sequence[int] | None = None) -> jax.Array:
    """uint8 [B, H, W, C] -> float32 normalised images [B, H', W', C], randomly cropped/flipped when ``augment``.

    ``image_size`` zero-pads small images (e.g. 8x8 digits for a 28x28 model). Padding and augmentation work on
    the raw pixels, so their padding is black (0), as in the CIFAR papers. ``resize`` (H'', W'') then resizes
    bilinearly (``config.image_resize``: 28x28 Fashion-MNIST upsampled for an ImageNet-pretrained network); it
    is applied after the per-channel normalisation, which it commutes with (its weights sum to 1).
    """
    images = pad_to_size(images, image_size)
    if augment:
        images = pipeline.augment(key, images, pad=pad, flip=flip)
    images = pipeline.normalize(images, mean, std, dtype=jnp.float32)
    if resize is not None and tuple(resize) != tuple(images.shape[1:3]):
        images = jax.image.resize(images, (images.shape[0], *resize, images.shape[3]), method="bilinear")
    return images


def _variables(params, batch_stats):
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _running_average_batch_norm(next_fun, args, kwargs, context):
    """Flax method interceptor: every ``nn.BatchNorm`` normalises with (and leaves unchanged) its running averages,
    as in evaluation, while the rest of the model (dropout) stays in training mode."""
    module = context.module
    if not isinstance(module, nn.BatchNorm) or context.method_name != "__call__" or module.use_running_average:
        return next_fun(*args, **kwargs)
    # The module is a fresh bound clone inside this apply; the models fix use_running_average as an attribute
    # (flax refuses it as a call argument too), so it is switched on this clone only.
    object.__setattr__(module, "use_running_average", True)
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(module, "use_running_average", False)


def train_step(state: TrainState, batch: dict[str, jax.Array], metrics: TrainMetrics, *, model, tx,
               num_classes: int, mean, std, augment: bool, flip: bool, label_smoothing: float,
               image_size: Sequence[int] | None = None, pad: int = 4, aux_loss_weight: float = 0.3,
               resize: Sequence[int] | None = None) -> tuple[TrainState, TrainMetrics]:
    """One optimizer step on one global batch.

    batch: {"image": uint8 [B, H, W, C], "label": int32 [B], "mask": bool [B]}. The loss is the mean over the
    masked examples, so padding rows (if any) do not count. Models that return ``(logits, aux1, aux2)`` in
    training (GoogLeNet with auxiliary heads) add ``aux_loss_weight`` times the auxiliary losses.
    """
    step_key = jax.random.fold_in(state.rng, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    images = preprocess(batch["image"], augment_key, mean=mean, std=std, augment=augment, pad=pad, flip=flip,
                        image_size=image_size, resize=resize)
    labels = batch["label"]
    mask = batch["mask"].astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)

    # config.init_freeze (state.FrozenStatsTransformation): BN uses and keeps its running statistics in training.
    freeze_batch_stats = getattr(tx, "freeze_batch_stats", False)

    def loss_fn(params):
        with nn.intercept_methods(_running_average_batch_norm) if freeze_batch_stats else contextlib.nullcontext():
            outputs, updates = model.apply(_variables(params, state.batch_stats), images, train=True,
                                           mutable=["batch_stats"], rngs={"dropout": dropout_key})
        aux = ()
        if isinstance(outputs, (tuple, list)):
            outputs, *aux = outputs
        per_example = cross_entropy(outputs, labels, num_classes=num_classes, label_smoothing=label_smoothing)
        loss = (per_example * mask).sum() / count
        for aux_logits in aux:
            aux_ce = cross_entropy(aux_logits, labels, num_classes=num_classes, label_smoothing=label_smoothing)
            loss = loss + aux_loss_weight * (aux_ce * mask).sum() / count
        return loss, (outputs, per_example, updates.get("batch_stats", state.batch_stats))

    grads, (logits, per_example, new_batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    new_step = state.step + 1
    new_state = state.replace(params=new_params, batch_stats=new_batch_stats, opt_state=new_opt_state,
                              step=new_step)

    loss_sum = (per_example * mask).sum()
    correct = ((jnp.argmax(logits, -1) == labels) * batch["mask"]).sum().astype(jnp.int32)
    nonfinite = jnp.where(jnp.isfinite(loss_sum), _NO_NONFINITE, new_step)
    metrics = TrainMetrics(loss_sum=metrics.loss_sum + loss_sum, correct=metrics.correct + correct,
                           count=metrics.count + batch["mask"].sum().astype(jnp.int32),
                           first_nonfinite_step=jnp.minimum(metrics.first_nonfinite_step, nonfinite))
    return new_state, metrics


def train_steps(state: TrainState, batches: dict[str, jax.Array], metrics: TrainMetrics, **step_kwargs):
    """``k`` consecutive train steps over stacked batches ``{"image": [k, B, H, W, C], ...}`` with ``lax.scan``."""

    if jax.tree.leaves(batches)[0].shape[0] == 1:
        return train_step(state, jax.tree.map(lambda x: x[0], batches), metrics, **step_kwargs)

    def body(carry, batch):
        state, metrics = carry
        return train_step(state, batch, metrics, **step_kwargs), None

    # XLA:CPU can run the body of a rolled while loop (what scan lowers to) far slower than the same ops in
    # straight code: ResNet-20, batch 128, k = 2: 9 img/s rolled vs 249 unrolled (229 at k = 1), compile 63 s vs 4 s.
    # So on CPU the k steps are unrolled (compile time grows with k); accelerators keep the compact loop.
    unroll = jax.default_backend() == "cpu"
    (state, metrics), _ = jax.lax.scan(body, (state, metrics), batches, unroll=unroll)
    return state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], metrics: EvalMetrics, *, model, num_classes: int,
              mean, std, image_size: Sequence[int] | None = None,
              resize: Sequence[int] | None = None) -> EvalMetrics:
    """Adds one batch's loss, top-1/top-5 hits and confusion counts (masked rows only) to ``metrics``."""
    images = preprocess(batch["image"], None, mean=mean, std=std, augment=False, image_size=image_size,
                        resize=resize)
    logits = model.apply(_variables(state.params, state.batch_stats), images, train=False)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits = logits.astype(jnp.float32)
    labels = batch["label"]
    mask = batch["mask"]
    per_example = cross_entropy(logits, labels, num_classes=num_classes)
    predicted = jnp.argmax(logits, -1)
    k = min(5, num_classes)
    _, top_k = jax.lax.top_k(logits, k)
    in_top5 = jnp.any(top_k == labels[:, None], axis=-1)
    # Confusion counts as one matrix product: one_hot(true)^T @ one_hot(predicted), masked rows zeroed.
    true_one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * mask[:, None]
    pred_one_hot = jax.nn.one_hot(predicted, num_classes, dtype=jnp.int32)
    return EvalMetrics(
        loss_sum=metrics.loss_sum + jnp.where(mask, per_example, 0.0).sum(),
        correct=metrics.correct + ((predicted == labels) & mask).sum().astype(jnp.int32),
        correct_top5=metrics.correct_top5 + (in_top5 & mask).sum().astype(jnp.int32),
        count=metrics.count + mask.sum().astype(jnp.int32),
        confusion=metrics.confusion + true_one_hot.T @ pred_one_hot,
    )


def make_train_fn(state_shardings, metrics_sharding, **step_kwargs) -> Callable:
    """Jitted ``(state, stacked_batches, metrics) -> (state, metrics)``; state and metrics buffers are donated."""
    return jax.jit(functools.partial(train_steps, **step_kwargs), donate_argnums=(0, 2),
                   out_shardings=(state_shardings, metrics_sharding))


def make_eval_fn(metrics_sharding, **step_kwargs) -> Callable:
    """Jitted ``(state, batch, metrics) -> metrics``; the metrics buffers are donated."""
    return jax.jit(functools.partial(eval_step, **step_kwargs), donate_argnums=(2,), out_shardings=metrics_sharding)


def summarize_eval(metrics: EvalMetrics, num_classes: int) -> dict[str, Any]:
    """Host dict of final eval figures: eval_loss, eval_accuracy, eval_top5_accuracy (K > 5), per-class
    accuracy, confusion matrix (lists), eval_count."""
    m = jax.device_get(metrics)
    count = max(int(m.count), 1)
    confusion = m.confusion.astype(int)
    per_class_total = confusion.sum(1)
    per_class = [float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else float("nan")
                 for i in range(num_classes)]
    out = {"eval_loss": float(m.loss_sum) / count, "eval_accuracy": int(m.correct) / count,
           "eval_count": int(m.count), "eval_per_class_accuracy": per_class, "eval_confusion": confusion.tolist()}
    if num_classes > 5:
        out["eval_top5_accuracy"] = int(m.correct_top5) / count
    return out
