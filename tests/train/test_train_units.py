"""Schedules, optimizers, loss and the masked eval step against hand-computed references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnlab.train import state as state_lib
from cnnlab.train import steps as steps_lib
from experiments.configs import common


def _config(**overrides):
    c = common.base_config()
    for k, v in overrides.items():
        c[k] = v
    return c


def test_step_schedule_papers_resnet_recipe():
    # He et al. 2016, CIFAR: lr 0.1, divided by 10 at 32k and 48k iterations.
    schedule = state_lib.make_schedule(_config(schedule="step", learning_rate=0.1, lr_boundaries_steps=(32000, 48000)),
                                       steps_per_epoch=391, total_steps=64000)
    for step, want in [(0, 0.1), (31999, 0.1), (32000, 0.01), (47999, 0.01), (48000, 0.001), (63999, 0.001)]:
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6)
    by_epochs = state_lib.make_schedule(_config(schedule="step", learning_rate=0.2, lr_boundaries_epochs=(2, 3),
                                                lr_decay_factor=0.5), steps_per_epoch=10, total_steps=40)
    assert [float(by_epochs(s)) for s in (19, 20, 29, 30)] == pytest.approx([0.2, 0.1, 0.1, 0.05])


def test_cosine_with_linear_warmup_and_constant():
    schedule = state_lib.make_schedule(_config(schedule="cosine", learning_rate=0.4, warmup_epochs=1.0),
                                       steps_per_epoch=10, total_steps=110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.2)
    assert float(schedule(10)) == pytest.approx(0.4)
    # Halfway through the cosine part (100 steps after warmup): 0.4 * (1 + cos(pi/2)) / 2.
    assert float(schedule(60)) == pytest.approx(0.2, rel=1e-5)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)
    constant = state_lib.make_schedule(_config(schedule="constant", learning_rate=0.3), steps_per_epoch=10,
                                       total_steps=100)
    assert float(constant(0)) == float(constant(99)) == pytest.approx(0.3)


def test_onecycle_peaks_at_pct_start():
    schedule = state_lib.make_schedule(_config(schedule="onecycle", learning_rate=1.0, onecycle_pct_start=0.25),
                                       steps_per_epoch=10, total_steps=100)
    values = np.array([float(schedule(s)) for s in range(101)])
    assert values.argmax() == 25 and values.max() == pytest.approx(1.0)
    assert values[0] == pytest.approx(1.0 / 25) and values[-1] == pytest.approx(1.0 / 25 / 1e4, rel=1e-3)


def test_sgd_nesterov_weight_decay_and_clipping_match_the_formulas():
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([3.0, 4.0])}  # global norm 5
    tx = state_lib.make_optimizer(_config(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=0.1,
                                          grad_clip_norm=1.0), optax.constant_schedule(0.5))
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    g = np.array([3.0, 4.0]) / 5.0 + 0.1 * np.array([1.0, -2.0])  # clip, then L2 term
    # Nesterov with zero initial momentum: v = g; update = -lr * (g + 0.9 v).
    np.testing.assert_allclose(updates["w"], -0.5 * (g + 0.9 * g), rtol=1e-6)


def test_adamw_decouples_weight_decay_adam_couples_it():
    params = {"w": jnp.array([2.0])}
    grads = {"w": jnp.array([0.0])}
    adamw = state_lib.make_optimizer(_config(optimizer="adamw", weight_decay=0.1), optax.constant_schedule(0.01))
    updates, _ = adamw.update(grads, adamw.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.01 * 0.1 * 2.0], rtol=1e-6)  # lr * wd * w, no Adam scaling
    adam = state_lib.make_optimizer(_config(optimizer="adam", weight_decay=0.1), optax.constant_schedule(0.01))
    updates, _ = adam.update(grads, adam.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.01], rtol=1e-4)  # Adam normalises the L2 gradient: ~ -lr


def test_cross_entropy_with_label_smoothing():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    log_p = np.asarray(jax.nn.log_softmax(logits))[0]
    plain = steps_lib.cross_entropy(logits, jnp.array([0]), num_classes=3)
    np.testing.assert_allclose(plain, [-log_p[0]], rtol=1e-6)
    smooth = steps_lib.cross_entropy(logits, jnp.array([0]), num_classes=3, label_smoothing=0.3)
    target = np.array([0.7 + 0.1, 0.1, 0.1])
    np.testing.assert_allclose(smooth, [-(target * log_p).sum()], rtol=1e-6)


def test_eval_step_counts_only_masked_rows():
    class FixedLogits:
        """Stands in for a model: returns the logits carried in the image batch."""

        def apply(self, variables, images, train):
            return images[:, 0, 0, :6] * 1.0

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 5, 0, 1], np.int32)
    mask = np.array([True] * 6 + [False] * 2)
    images = np.zeros((8, 1, 1, 6), np.float32)
    images[:, 0, 0] = logits
    state = state_lib.TrainState(params={}, batch_stats={}, opt_state=(), step=jnp.zeros((), jnp.int32),
                                 rng=jax.random.key(0))
    # Identity preprocessing: mean 0, std 1/255 turns x/255 back into x.
    metrics = steps_lib.eval_step(state, {"image": jnp.asarray(images), "label": jnp.asarray(labels),
                                          "mask": jnp.asarray(mask)}, steps_lib.EvalMetrics.zeros(6),
                                  model=FixedLogits(), num_classes=6, mean=(0.0,), std=(1 / 255,))
    summary = steps_lib.summarize_eval(metrics, 6)
    predicted = logits.argmax(1)
    real = mask.nonzero()[0]
    assert summary["eval_count"] == 6
    assert summary["eval_accuracy"] == pytest.approx(np.mean(predicted[real] == labels[real]))
    top5 = np.argsort(-logits, 1)[:, :5]
    assert summary["eval_top5_accuracy"] == pytest.approx(np.mean([labels[i] in top5[i] for i in real]))
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert summary["eval_loss"] == pytest.approx(-np.mean(log_p[real, labels[real]]), rel=1e-5)
    confusion = np.zeros((6, 6), int)
    for i in real:
        confusion[labels[i], predicted[i]] += 1
    np.testing.assert_array_equal(summary["eval_confusion"], confusion)
    assert math.isclose(sum(summary["eval_per_class_accuracy"]), np.trace(confusion))  # one example per class


def test_scan_over_k_steps_equals_k_single_steps():
    import flax.linen as nn

    from cnnlab import parallel

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(10)(nn.relu(x).mean((1, 2)))

    mesh = parallel.make_data_mesh(jax.devices()[:1])
    tx = optax.sgd(0.1, momentum=0.9)
    kwargs = dict(model=Tiny(), tx=tx, num_classes=10, mean=(0.5,), std=(0.25,), augment=True, flip=True,
                  label_smoothing=0.1)
    rng = np.random.default_rng(0)
    batches = {"image": rng.integers(0, 256, (3, 16, 8, 8, 1), dtype=np.uint8),
               "label": rng.integers(0, 10, (3, 16)).astype(np.int32), "mask": np.ones((3, 16), bool)}
    state, _ = state_lib.create_train_state(Tiny(), tx, seed=0, input_shape=(8, 8, 1), mesh=mesh)
    scanned, scanned_metrics = jax.jit(lambda s, b, m: steps_lib.train_steps(s, b, m, **kwargs))(
        state, batches, steps_lib.TrainMetrics.zeros())
    single, metrics = state, steps_lib.TrainMetrics.zeros()
    step = jax.jit(lambda s, b, m: steps_lib.train_step(s, b, m, **kwargs))
    for i in range(3):
        single, metrics = step(single, jax.tree.map(lambda x: x[i], batches), metrics)
    assert int(scanned.step) == int(single.step) == 3
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), scanned.params, single.params)
    assert float(scanned_metrics.loss_sum) == pytest.approx(float(metrics.loss_sum), rel=1e-5)
    assert int(scanned_metrics.count) == 48
