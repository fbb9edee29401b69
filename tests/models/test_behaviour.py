"""Numerical behaviour on small models and inputs: batch norm, dropout, gradients, determinism, bfloat16,
auxiliary heads, bad input, summary."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnlab import models
from cnnlab.models import densenet, resnet, vgg


def images(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def init_key(seed=0):
    # A typed key with the "rbg" generator: parameter initialisation compiles ~4x faster than with the default
    # threefry on CPU, which matters for a fast suite. (Models take any typed key; determinism with the default
    # generator is tested below.)
    return jax.random.key(seed, impl="rbg")


def _init(model, shape):
    return model, jax.jit(functools.partial(model.init, train=False))(init_key(), images(shape))


@functools.lru_cache(maxsize=None)
def initialised_tiny(constructor, shape):
    """(model, variables) for a test-only tiny variant (10 classes), initialised once per session."""
    return _init(constructor(num_classes=10), shape)


@functools.lru_cache(maxsize=None)
def initialised(name, shape, **overrides):
    """(model, variables) for a registered model, initialised once per test session (eval mode)."""
    return _init(models.get(name, num_classes=10, **overrides), shape)


# ---------------------------------------------------------------- batch norm

def test_batch_norm_updates_running_averages_from_batch_statistics():
    model, variables = initialised("resnet20", (4, 8, 8, 3))
    x = images((4, 8, 8, 3)) * 2.0 + 0.5
    stem = variables["batch_stats"]["stem_bn"]
    np.testing.assert_array_equal(stem["mean"], 0.0)
    np.testing.assert_array_equal(stem["var"], 1.0)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert set(updates) == {"batch_stats"}
    assert logits.shape == (4, 10)
    # The stem BN sees the stem convolution's output; its running stats move 10% of the way (momentum 0.9)
    # to the batch mean and (biased) batch variance over batch, height and width.
    conv_out = jax.lax.conv_general_dilated(x, variables["params"]["stem_conv"]["kernel"], (1, 1),
                                            ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mean = conv_out.mean(axis=(0, 1, 2))
    var = conv_out.var(axis=(0, 1, 2))
    new = updates["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(new["mean"], 0.1 * mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-5)
    # every BN layer's statistics moved
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("make,shape", [
    (lambda: initialised("resnet20", (4, 8, 8, 3)), (4, 8, 8, 3)),
    (lambda: initialised_tiny(vgg.VGGTiny, (4, 8, 8, 3)), (4, 8, 8, 3)),
    (lambda: initialised_tiny(densenet.DenseNetTiny, (4, 8, 8, 3)), (4, 8, 8, 3)),
], ids=["resnet20", "vgg_tiny", "densenet_tiny"])
def test_batch_norm_batch_statistics_in_training_running_averages_in_eval(make, shape):
    model, variables = make()
    x = images(shape, 1)
    other = x.at[1:].set(images(shape, 2)[1:] * 3.0)  # same first image, different batch mates
    rngs = {"dropout": jax.random.key(3)}
    # eval: each image's logits depend only on that image (running averages)
    eval_a = model.apply(variables, x, train=False)
    eval_b = model.apply(variables, other, train=False)
    np.testing.assert_allclose(eval_a[0], eval_b[0], rtol=1e-5, atol=1e-5)
    # training: batch statistics couple the images of the batch
    train_a, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    train_b, _ = model.apply(variables, other, train=True, mutable=["batch_stats"], rngs=rngs)
    assert float(jnp.max(jnp.abs(train_a[0] - train_b[0]))) > 1e-4
    # eval does not need (or allow) mutation of batch_stats, and is repeatable
    np.testing.assert_array_equal(eval_a, model.apply(variables, x, train=False))


def test_models_without_batch_norm_return_empty_updates():
    for name, shape in [("lenet5", (4, 28, 28, 1)), ("alexnet_cifar", (4, 8, 8, 3))]:
        model, variables = initialised(name, shape)
        assert "batch_stats" not in variables
        _, updates = model.apply(variables, images(shape), train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(1)})
        assert updates == {}


# ---------------------------------------------------------------- dropout

def test_dropout_only_in_training():
    model, variables = initialised("alexnet_cifar", (4, 8, 8, 3))
    x = images((4, 8, 8, 3))
    eval_1 = model.apply(variables, x, train=False)
    eval_2 = model.apply(variables, x, train=False, rngs={"dropout": jax.random.key(9)})
    np.testing.assert_array_equal(eval_1, eval_2)
    train_1 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    train_1b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    train_2 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(train_1, train_1b)  # same key, same mask
    assert float(jnp.max(jnp.abs(train_1 - train_2))) > 1e-6
    assert float(jnp.max(jnp.abs(train_1 - eval_1))) > 1e-6
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)  # training without a "dropout" rng is an error


def test_vgg_dropout_rate_zero_makes_training_deterministic():
    model, variables = _init(vgg.VGGTiny(num_classes=10, dropout_rate=0.0), (4, 8, 8, 3))
    x = images((4, 8, 8, 3))
    a, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    b, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- gradients

SMALL_MODELS = [
    ("lenet5", lambda: initialised("lenet5", (4, 28, 28, 1)), (4, 28, 28, 1)),
    ("resnet20", lambda: initialised("resnet20", (4, 8, 8, 3)), (4, 8, 8, 3)),
    ("resnet_tiny", lambda: initialised_tiny(resnet.ResNetTiny, (4, 8, 8, 3)), (4, 8, 8, 3)),
    ("vgg_tiny", lambda: initialised_tiny(vgg.VGGTiny, (4, 8, 8, 3)), (4, 8, 8, 3)),
    ("densenet_tiny", lambda: initialised_tiny(densenet.DenseNetTiny, (4, 8, 8, 3)), (4, 8, 8, 3)),
    pytest.param("googlenet_small", lambda: initialised("googlenet", (2, 4, 4, 3), small_input=True), (2, 4, 4, 3),
                 marks=pytest.mark.slow),  # compiling GoogLeNet's backward pass takes ~40 s on 2 cores
    # alexnet_cifar's layer types (conv, dense, dropout, adaptive pool) are covered by lenet5 and vgg_tiny above
    pytest.param("alexnet_cifar", lambda: initialised("alexnet_cifar", (4, 8, 8, 3)), (4, 8, 8, 3),
                 marks=pytest.mark.slow),
    pytest.param("resnet20_B", lambda: initialised("resnet20", (4, 8, 8, 3), shortcut="B"), (4, 8, 8, 3),
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("label,make,shape", SMALL_MODELS, ids=lambda v: v if isinstance(v, str) else "")
def test_gradients_are_finite_and_reach_every_parameter(label, make, shape):
    model, variables = make()
    x = images(shape)
    labels = jnp.arange(shape[0]) % 10

    @jax.jit
    def loss_fn(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(1)})
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))

    loss, grads = jax.value_and_grad(loss_fn)(variables["params"])
    assert bool(jnp.isfinite(loss))
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    nonzero = sum(bool(jnp.any(g != 0)) for g in leaves)
    assert nonzero == len(leaves), f"{len(leaves) - nonzero} parameter arrays got no gradient"


# ---------------------------------------------------------------- determinism and dtypes

def test_same_key_same_parameters_different_key_different():
    # The default generator (threefry), not jitted, as a training loop would call init.
    model = models.get("lenet5", num_classes=10)
    x = jnp.zeros((4, 28, 28, 1))
    a = model.init(jax.random.key(42), x)
    b = model.init(jax.random.key(42), x)
    c = model.init(jax.random.key(43), x)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["params"]["stem_conv"]["kernel"], c["params"]["stem_conv"]["kernel"])
    # the parameters do not depend on the image values used to initialise
    d = model.init(jax.random.key(42), images((4, 28, 28, 1)))
    jax.tree.map(np.testing.assert_array_equal, a["params"], d["params"])
    # and a batch-norm model (jitted, "rbg" keys: same compiled program, same key -> same values)
    model, first = initialised("resnet20", (4, 8, 8, 3))
    _, again = _init(model, (4, 8, 8, 3))
    jax.tree.map(np.testing.assert_array_equal, first, again)


@pytest.mark.parametrize("name,shape", [("lenet5", (4, 28, 28, 1)), ("resnet20", (4, 8, 8, 3))])
def test_bfloat16_computation_float32_parameters_close_to_float32(name, shape):
    x = images(shape, 5)
    f32, variables = initialised(name, shape)
    bf16 = models.get(name, num_classes=10, dtype=jnp.bfloat16)
    variables_bf16 = jax.jit(functools.partial(bf16.init, train=False))(init_key(), x)
    # parameters stay float32 (and identical) whatever the computation dtype
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables_bf16))
    jax.tree.map(np.testing.assert_array_equal, variables, variables_bf16)
    ref = f32.apply(variables, x)
    low = bf16.apply(variables, x)
    assert low.dtype == jnp.float32  # logits are returned in float32
    scale = float(jnp.max(jnp.abs(ref)))
    # bfloat16 keeps 8 significant bits (relative error 2**-8 per rounding): a few percent of the logit scale
    assert float(jnp.max(jnp.abs(low - ref))) < 0.05 * scale + 1e-3
    assert float(jnp.max(jnp.abs(low - ref))) > 0  # it really ran in lower precision
    np.testing.assert_array_equal(jnp.argmax(low, -1)[ref.max(-1) - jnp.sort(ref, -1)[:, -2] > 0.1 * scale],
                                  jnp.argmax(ref, -1)[ref.max(-1) - jnp.sort(ref, -1)[:, -2] > 0.1 * scale])


def test_bad_dtype_override():
    with pytest.raises(ValueError, match="dtype"):
        models.get("resnet20", num_classes=10, dtype=jnp.int32)


# ---------------------------------------------------------------- GoogLeNet auxiliary heads

def test_googlenet_aux_heads_only_in_training():
    # Shapes and structure only (jax.eval_shape): compiling GoogLeNet is slow on 2 CPU cores.
    model = models.get("googlenet", num_classes=7, aux_logits=True)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert {"aux1", "aux2"} <= set(variables["params"])
    out, updates = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                        rngs={"dropout": jax.random.key(1)}), variables)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(o.shape == (2, 7) and o.dtype == jnp.float32 for o in out)
    assert {"aux1", "aux2"} <= set(updates["batch_stats"])
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == (2, 7)
    plain = models.get("googlenet", num_classes=7, small_input=True)
    plain_vars = jax.eval_shape(lambda: plain.init(jax.random.key(0), x))
    assert not {"aux1", "aux2"} & set(plain_vars["params"])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name,good", [("lenet5", (1, 28, 28, 1)), ("resnet20", (1, 32, 32, 3)),
                                       ("vgg11", (1, 32, 32, 3)), ("googlenet", (1, 32, 32, 3)),
                                       ("densenet121", (1, 32, 32, 3)), ("alexnet", (1, 63, 63, 3)),
                                       ("alexnet_cifar", (1, 8, 8, 3)), ("densenet_bc_100_12", (1, 8, 8, 3))])
def test_bad_inputs_raise_clear_errors(name, good):
    model = models.get(name, num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(good)))
    run = lambda shape, dtype=jnp.float32: jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape, dtype)), variables)
    run(good)
    with pytest.raises(ValueError, match="rank 4"):
        run(good[1:])
    with pytest.raises(ValueError, match="rank 4"):
        run((1, *good))
    other_channels = 3 if good[-1] == 1 else 1
    with pytest.raises(ValueError, match=f"expects {good[-1]} input channel"):
        run((*good[:3], other_channels))
    with pytest.raises(TypeError, match="floating-point"):
        run(good, jnp.uint8)
    small = models.min_input_size(name) - 1
    if small >= 1:
        with pytest.raises(ValueError, match="smallest"):
            run((1, small, small, good[-1]))
    # a fixed input_channels is checked at init too
    fixed = models.get(name, num_classes=10, input_channels=good[-1])
    with pytest.raises(ValueError, match=f"input_channels={other_channels}"):
        jax.eval_shape(lambda: fixed.init(jax.random.key(0), jnp.zeros((*good[:3], other_channels))))
    with pytest.raises(TypeError, match="array"):
        model.apply(variables, [[1.0]])


def test_bad_options():
    with pytest.raises(ValueError, match="shortcut"):
        models.get("resnet20", num_classes=10, shortcut="C").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="branch5x5_kernel"):
        models.get("googlenet", num_classes=10, branch5x5_kernel=7).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(TypeError, match="small_input"):
        models.get("vgg16", num_classes=10, small_input=True)


# ---------------------------------------------------------------- summary

def test_summary_lists_layers_shapes_and_counts():
    text = models.summary("lenet5", (1, 28, 28, 1), num_classes=10)
    lines = text.splitlines()
    assert lines[0].startswith("lenet5 (LeNet5)")
    row = {line.split()[0]: line for line in lines[2:-1]}
    # LeNet-5's conv + pool blocks are one module each (cnnlab/models/conv_pool.py): pooled outputs
    assert "(1, 14, 14, 6)" in row["stem_conv"] and row["stem_conv"].rstrip().endswith("156")
    assert "(1, 5, 5, 16)" in row["conv2"] and row["conv2"].rstrip().endswith("2,416")
    assert "(1, 120)" in row["c5"] and row["c5"].rstrip().endswith("48,120")
    assert lines[-1] == "Total parameters: 61,706"
    text = models.summary("resnet50", (1, 224, 224, 3), num_classes=1000, depth=1)
    assert text.splitlines()[-1].startswith("Total parameters: 25,557,032  (+ ")
    assert "stage4_block3" in text and "(1, 7, 7, 2048)" in text and "stage4_block3/conv1" not in text
    with pytest.raises(ValueError, match="Known models"):
        models.summary("resnet19", (1, 32, 32, 3), num_classes=10)
