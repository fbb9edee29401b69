"""config.init_from / init_freeze: a run starts from converted torchvision weights or another cnnlab run.

The source weights are made here (no download): random ResNet-18 variables (1000 classes, 3 channels, random BN
statistics) written as a torchvision state dict (.npz of torchvision names, what `to_torch` gives) and converted
by the command-line converter; the runs fine-tune on sklearn's digits (1 channel, 10 classes).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnlab import models
from cnnlab.jobs import train_and_evaluate
from cnnlab.models import resnet, torch_weights
from cnnlab.train import loop, pretrained, steps
from cnnlab.train import state as state_lib
from _train_helpers import tiny_config


def _leaves(tree, prefix=()):
    return pretrained._leaves(tree, prefix)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(path of the converted .npz, the source variables) of a random 1000-class, 3-channel ResNet-18."""
    directory = tmp_path_factory.mktemp("weights")
    model = models.get("resnet18", num_classes=1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    rng = np.random.default_rng(0)
    source = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32) * 0.05, dict(shapes))
    source["batch_stats"] = jax.tree.map(lambda v: np.abs(v) + 0.5, source["batch_stats"])  # positive variances
    np.savez(directory / "resnet18_torchvision.npz", **models.to_torch("resnet18", source))
    out = directory / "resnet18.npz"
    assert torch_weights.main(["convert", "--model=resnet18",
                               f"--torch_file={directory / 'resnet18_torchvision.npz'}", f"--out={out}"]) == 0
    return str(out), source


def finetune_config(path, **overrides):
    return tiny_config(**{"model": "resnet18", "init_from": path, "init_freeze": "backbone", "optimizer": "sgd",
                          "learning_rate": 0.05, **overrides})


def assert_backbone_is_source(params, batch_stats, source):
    checked = 0
    for path, value in _leaves(params).items():
        if path[0] == "fc":
            continue
        expected = source["params"]
        for key in path:
            expected = expected[key]
        if path == ("stem_conv", "kernel"):  # 3-channel weights into the 1-channel digits model: summed
            expected = expected.sum(axis=2, keepdims=True)
        np.testing.assert_allclose(np.asarray(value), expected, rtol=1e-6, atol=1e-7, err_msg=str(path))
        checked += 1
    assert checked == 60  # every ResNet-18 parameter but the head's two
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), batch_stats, source["batch_stats"])


@pytest.fixture(scope="module")
def setup_run(converted):
    """(loop.setup of the digits fine-tune from the converted file, what it printed)."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = loop.setup(finetune_config(converted[0]))
    return run, printed.getvalue()


def test_setup_loads_the_converted_weights_with_a_new_head(converted, setup_run):
    path, source = converted
    run, out = setup_run
    assert_backbone_is_source(run.state.params, run.state.batch_stats, source)
    assert run.state.params["fc"]["kernel"].shape == (512, 10)
    assert f"init_from: resnet18 weights from {path}" in out
    assert "head fc replaced: (512, 1000) in the source, (512, 10) here, freshly initialised" in out
    assert "first convolution (7, 7, 3, 64) summed over its 3 input channels -> (7, 7, 1, 64)" in out


@pytest.fixture(scope="module")
def finetuned(converted, tmp_path_factory):
    """A 6-step fine-tune of the converted ResNet-18 on digits with the backbone frozen: (workdir, results)."""
    path, _ = converted
    workdir = str(tmp_path_factory.mktemp("finetune") / "run")
    results = train_and_evaluate(finetune_config(path, num_train_steps=6, batch_size=64), workdir)
    return workdir, results


def test_finetune_with_frozen_backbone_trains_the_head_only(converted, finetuned, setup_run):
    path, source = converted
    workdir, results = finetuned
    variables, meta = pretrained.load_source(workdir)
    assert meta["model"] == "resnet18" and results["details"]["steps"] == 6
    assert_backbone_is_source(variables["params"], variables["batch_stats"], source)  # BN statistics too
    initial = setup_run[0].state.params["fc"]  # same config and seed: the head the fine-tune started from
    assert not np.allclose(variables["params"]["fc"]["kernel"], np.asarray(initial["kernel"]))
    assert np.isfinite(results["test"]["loss"])


@pytest.mark.slow  # a second training run (~25 s); the converted-file path runs by default
def test_a_run_starts_from_another_runs_best_checkpoint(finetuned, capsys):
    workdir, _ = finetuned
    variables, _ = pretrained.load_source(workdir)
    run = loop.setup(tiny_config(model="resnet18", init_from=workdir, seed=3))  # another seed: other fresh values
    assert f"init_from: resnet18 weights from {workdir}/checkpoints step 6" in capsys.readouterr().out
    for collection, tree in (("params", run.state.params), ("batch_stats", run.state.batch_stats)):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), tree, variables[collection])


@pytest.mark.slow  # ~25 s; init_freeze=backbone (BN frozen too) runs by default
def test_frozen_batch_stats_use_and_keep_the_running_averages():
    model = resnet.ResNetTiny(num_classes=10)  # BN everywhere, small enough to compile in seconds
    images = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3)) * 255
    batch = {"image": images.astype(jnp.uint8), "label": jnp.arange(8) % 10, "mask": jnp.ones(8, bool)}
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    # Running statistics far from the batch's, so using them (or not) changes the loss.
    batch_stats = jax.tree.map(lambda v: v + 0.5, variables["batch_stats"])
    results = {}
    for freeze in ("none", "batch_stats"):
        config = tiny_config(model="resnet18", init_from="unused.npz", init_freeze=freeze)
        tx = state_lib.make_optimizer(config, optax.constant_schedule(0.1))
        state = state_lib.TrainState(params=variables["params"], batch_stats=batch_stats,
                                     opt_state=tx.init(variables["params"]), step=jnp.zeros((), jnp.int32),
                                     rng=jax.random.key(2))
        step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, num_classes=10, mean=(127.5,) * 3,
                                         std=(64.0,) * 3, augment=False, flip=False, label_smoothing=0.0))
        new_state, metrics = step(state, batch, steps.TrainMetrics.zeros())
        results[freeze] = (new_state, float(metrics.loss_sum) / 8)
    frozen_state, frozen_loss = results["batch_stats"]
    jax.tree.map(np.testing.assert_array_equal, frozen_state.batch_stats, batch_stats)
    images = steps.preprocess(batch["image"], None, mean=(127.5,) * 3, std=(64.0,) * 3, augment=False)
    eval_logits = jax.jit(functools.partial(model.apply, train=False))(
        {"params": variables["params"], "batch_stats": batch_stats}, images)
    eval_loss = float(steps.cross_entropy(eval_logits, batch["label"], num_classes=10).mean())
    assert frozen_loss == pytest.approx(eval_loss, rel=1e-5)
    # Without freezing: batch statistics in the forward pass, running averages updated.
    free_state, free_loss = results["none"]
    assert free_loss != pytest.approx(eval_loss, rel=1e-3)
    assert not np.allclose(free_state.batch_stats["stem_bn"]["mean"], batch_stats["stem_bn"]["mean"])
    assert not np.allclose(frozen_state.params["stem_conv"]["kernel"], variables["params"]["stem_conv"]["kernel"])


def test_backbone_freeze_zeroes_every_update_but_the_heads():
    config = tiny_config(model="googlenet", init_from="unused.npz", init_freeze="backbone", weight_decay=1e-3)
    tx = state_lib.make_optimizer(config, optax.constant_schedule(0.1))
    assert tx.freeze_batch_stats
    params = {"conv1": {"stem_conv": {"kernel": jnp.ones((3, 3, 1, 4))}}, "fc": {"kernel": jnp.ones((4, 2))},
              "aux1": {"fc1": {"kernel": jnp.ones((2, 2))}, "fc2": {"kernel": jnp.ones((2, 2))}}}
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert not np.any(updates["conv1"]["stem_conv"]["kernel"]) and not np.any(updates["aux1"]["fc1"]["kernel"])
    assert np.all(updates["fc"]["kernel"] != 0) and np.all(updates["aux1"]["fc2"]["kernel"] != 0)
    assert not getattr(state_lib.make_optimizer(tiny_config(), optax.constant_schedule(0.1)),
                       "freeze_batch_stats", False)


def test_clear_errors(converted, setup_run, tmp_path):
    path, source = converted
    run, _ = setup_run

    def initialize(init_from, **overrides):
        return pretrained.initialize_from(finetune_config(init_from, **overrides), run.state, model=run.model,
                                          mesh=run.mesh, shardings=run.shardings)

    with pytest.raises(FileNotFoundError, match="no such file or directory: '/nonexistent.npz'"):
        initialize("/nonexistent.npz")
    with pytest.raises(ValueError, match="holds 'resnet18' weights, but config.model is 'resnet34'"):
        initialize(path, model="resnet34")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is a directory without cnnlab checkpoints"):
        initialize(str(tmp_path / "empty"))
    np.savez(tmp_path / "state_dict.npz", **{"fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match="must be converted first"):
        initialize(str(tmp_path / "state_dict.npz"))
    # A shape that differs outside the head: the source's 7x7 ImageNet stem into a small_input (3x3) ResNet-18.
    small = models.get("resnet18", num_classes=10, small_input=True)
    target = jax.eval_shape(lambda: small.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False))
    with pytest.raises(ValueError, match=r"stem_conv/kernel has shape \(7, 7, 3, 64\) in the source but "
                                         r"\(3, 3, 1, 64\) in this run's resnet18"):
        pretrained.merge("resnet18", source, target)
    with pytest.raises(ValueError, match="init_freeze='backbone' freezes loaded weights, but config.init_from is "
                                         "not set"):
        loop.setup(tiny_config(model="resnet18", init_freeze="backbone"))
    with pytest.raises(ValueError, match=r"init_freeze must be one of \['none', 'backbone', 'batch_stats'\]"):
        loop.setup(finetune_config(path, init_freeze="head"))
