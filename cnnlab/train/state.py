"""Train state, optimizers and learning-rate schedules.

The train state is a plain pytree (a ``flax.struct.dataclass``): params, batch_stats, opt_state, step, rng.
Parameters are created already placed on the mesh: ``jax.eval_shape`` gives the abstract state, and
``jax.jit(init, out_shardings=...)`` materialises it directly replicated on every device, so no host copy of the
full state is ever made.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from cnnlab import parallel

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")


class FrozenStatsTransformation(optax.GradientTransformation):
    """An optax transformation that also tells ``steps.train_step`` to freeze the BN statistics (BN layers use and
    keep their running averages in training): what ``config.init_freeze`` "batch_stats" and "backbone" ask for.
    The optimizer is the one object the training step receives from the config, so the flag travels with it."""

    freeze_batch_stats = True


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    params:       the model's "params" collection (float32).
    batch_stats:  the model's "batch_stats" collection ({} for models without batch norm).
    opt_state:    the optax optimizer state.
    step:         int32 scalar, number of optimizer updates done so far.
    rng:          typed PRNG key (``jax.random.key``); step ``s`` uses ``fold_in(rng, s)``, so the key itself
                  never changes and a resumed run draws exactly the same random numbers.
    """

    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def steps_from_epochs(epochs: float, steps_per_epoch: int) -> int:
    return int(round(float(epochs) * steps_per_epoch))


def make_schedule(config, *, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """The learning rate (per optimizer step) that ``config.schedule`` names.

    constant: ``learning_rate`` throughout (after the optional linear warmup).
    step:     ``learning_rate`` multiplied by ``lr_decay_factor`` at each boundary; boundaries are
              ``lr_boundaries_steps`` (optimizer steps) or, when that is empty, ``lr_boundaries_epochs`` (epochs).
    cosine:   linear warmup over ``warmup_epochs`` from 0 to ``learning_rate``, then cosine decay to
              ``learning_rate * final_lr_fraction`` at ``total_steps``.
    onecycle: Smith's one-cycle: cosine rise from ``learning_rate/25`` to ``learning_rate`` over the first
              ``onecycle_pct_start`` of training, then cosine decay to ``learning_rate/25/1e4``.
    """
    name = config.schedule
    lr = float(config.learning_rate)
    warmup = steps_from_epochs(config.get("warmup_epochs", 0.0), steps_per_epoch)
    if name == "constant":
        schedule = optax.constant_schedule(lr)
    elif name == "step":
        boundaries = [int(b) for b in config.get("lr_boundaries_steps", ())]
        if not boundaries:
            boundaries = [steps_from_epochs(e, steps_per_epoch) for e in config.get("lr_boundaries_epochs", ())]
        if not boundaries:
            raise ValueError("schedule='step' needs config.lr_boundaries_steps or config.lr_boundaries_epochs "
                             "(e.g. --config.lr_boundaries_epochs='(10, 15)').")
        factor = float(config.get("lr_decay_factor", 0.1))
        schedule = optax.piecewise_constant_schedule(lr, {b: factor for b in sorted(boundaries)})
    elif name == "cosine":
        fraction = float(config.get("final_lr_fraction", 0.0))
        if warmup == 0:
            return optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=fraction)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup,
                                                  decay_steps=max(total_steps, warmup + 1), end_value=lr * fraction)
    elif name == "onecycle":
        return optax.cosine_onecycle_schedule(max(total_steps, 1), lr,
                                              pct_start=float(config.get("onecycle_pct_start", 0.3)))
    else:
        raise ValueError(f"Unknown schedule {name!r}; known schedules: {list(SCHEDULES)}.")
    if warmup > 0:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
    return schedule


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Gradient clipping, weight decay and the optimizer that ``config.optimizer`` names.

    sgd:   L2 weight decay added to the gradient (as in the papers' and PyTorch's SGD), then momentum
           ``config.momentum`` (Nesterov if ``config.nesterov``).
    adam:  L2 weight decay added to the gradient, then Adam(b1, b2, eps).
    adamw: decoupled weight decay (Loshchilov & Hutter), scaled by the learning rate as in optax/PyTorch.
    ``config.grad_clip_norm > 0`` clips the global gradient norm first.
    ``config.init_freeze`` (fine-tuning from ``config.init_from``, see cnnlab/train/pretrained.py): "backbone"
    zeroes the updates of every parameter outside the classifier (``optax.multi_transform`` with
    ``optax.set_to_zero``; no weight decay there either) and freezes BN statistics; "batch_stats" freezes BN
    statistics only (a ``FrozenStatsTransformation``).
    """
    name = config.optimizer
    wd = float(config.weight_decay)
    parts = []
    if float(config.get("grad_clip_norm", 0.0)) > 0:
        parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
    if name == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        momentum = float(config.get("momentum", 0.9))
        parts.append(optax.sgd(schedule, momentum=momentum or None, nesterov=bool(config.get("nesterov", False))))
    elif name == "adam":
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.adam(schedule, b1=float(config.get("b1", 0.9)), b2=float(config.get("b2", 0.999)),
                                eps=float(config.get("eps", 1e-8))))
    elif name == "adamw":
        parts.append(optax.adamw(schedule, b1=float(config.get("b1", 0.9)), b2=float(config.get("b2", 0.999)),
                                 eps=float(config.get("eps", 1e-8)), weight_decay=wd))
    else:
        raise ValueError(f"Unknown optimizer {name!r}; known optimizers: {list(OPTIMIZERS)}.")
    tx = optax.chain(*parts)
    from cnnlab.train import pretrained  # here: pretrained imports the models, which state.py otherwise needs not

    freeze = pretrained.freeze_mode(config)
    if freeze == "backbone":
        model_name = config.get("model")

        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "head" if pretrained.is_head(model_name, tuple(k.key for k in path)) else "frozen",
                params)

        tx = optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, labels)
    if freeze in ("backbone", "batch_stats"):
        tx = FrozenStatsTransformation(tx.init, tx.update)
    return tx


def create_train_state(model, tx: optax.GradientTransformation, *, seed: int, input_shape: tuple[int, ...],
                       mesh: Mesh) -> tuple[TrainState, Any]:
    """Initialises the train state directly replicated over ``mesh``.

    Args:
      model: a Flax Linen module taking NHWC float images and ``train``.
      tx: the optimizer.
      seed: the run's seed; parameters use one half of ``jax.random.key(seed)``, training randomness the other.
      input_shape: one image's shape (H, W, C).
      mesh: the device mesh.

    Returns:
      ``(state, shardings)``: the state and a pytree of the same structure holding each leaf's sharding.
    """

    def init(key):
        params_key, train_key = jax.random.split(key)
        variables = model.init(params_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                          step=jnp.zeros((), jnp.int32), rng=train_key)

    key = jax.random.key(seed)
    abstract = jax.eval_shape(init, key)
    shardings = jax.tree.map(lambda _: parallel.replicated(mesh), abstract)
    state = jax.jit(init, out_shardings=shardings)(key)
    return state, shardings
