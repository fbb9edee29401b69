"""conv_pool: the conv -> activation -> pool block as one matrix product equals the textbook layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnlab import models
from cnnlab.models import conv_pool as cp


def reference(x_nhwc, kernel, bias, activation, pool, window):
    """nn.Conv(VALID) -> activation -> VALID pooling on NHWC, with lax ops."""
    y = jax.lax.conv_general_dilated(x_nhwc, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = cp.ACTIVATIONS[activation](y + bias)
    pooler = nn.max_pool if pool == "max" else nn.avg_pool
    return pooler(y, (window, window), strides=(window, window))


def block(x_nhwc, kernel, bias, activation, pool, window, merge_batch=None):
    return cp.conv_pool(x_nhwc, kernel, bias, activation=activation, pool=pool, window=window,
                        merge_batch=merge_batch)


CASES = [  # (size, channels, k, out, window): k + window - 1 a multiple of window or not (zero-extended patch)
    (32, 1, 5, 6, 2), (14, 6, 5, 16, 2), (15, 3, 5, 4, 2), (11, 2, 3, 5, 2), (12, 2, 4, 3, 2), (13, 2, 3, 4, 3),
]


PAIRS = [("relu", "max"), ("tanh", "avg"), ("tanh", "max"), ("linear", "avg")]
# The default suite checks every (activation, pool) pair and both batch layouts once each, on LeNet's C1 shape, an
# odd size, a zero-extended patch (k + window - 1 not a multiple of window) and a 3x3 window (4 compilations of
# about 9 s each on 2 cores); --runslow checks the whole grid (48).
DEFAULT_CASES = {0: 0, 2: 1, 4: 2, 5: 3}  # case index -> the pair it is checked with
GRID = [pytest.param(*case, *pair, merge, marks=() if DEFAULT_CASES.get(i) == j and merge == (j % 2 == 0)
                     else pytest.mark.slow)
        for i, case in enumerate(CASES) for j, pair in enumerate(PAIRS) for merge in (True, False)]


@pytest.mark.parametrize("size,channels,k,out,window,activation,pool,merge_batch", GRID)
def test_values_and_gradients_equal_the_textbook_layers(size, channels, k, out, window, activation, pool,
                                                        merge_batch):
    keys = jax.random.split(jax.random.key(size * 100 + k), 4)
    x = jax.random.normal(keys[0], (3, size, size, channels))
    kernel = jax.random.normal(keys[1], (k, k, channels, out)) * 0.3
    bias = jax.random.normal(keys[2], (out,)) * 0.3
    expected = reference(x, kernel, bias, activation, pool, window)
    got = block(x, kernel, bias, activation, pool, window, merge_batch)
    assert got.shape == expected.shape == (3, (size - k + 1) // window, (size - k + 1) // window, out)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    g = jax.random.normal(keys[3], expected.shape)

    def loss(f, *extra):
        return lambda x, kernel, bias: (f(x, kernel, bias, activation, pool, window, *extra) * g).sum()

    got_grads = jax.grad(loss(block, merge_batch), argnums=(0, 1, 2))(x, kernel, bias)
    expected_grads = jax.grad(loss(reference), argnums=(0, 1, 2))(x, kernel, bias)
    for name, a, b in zip(("input", "kernel", "bias"), got_grads, expected_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def test_max_gradient_goes_to_the_first_maximum_of_a_window():
    y = jnp.array([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0], [0.0, 5.0]])  # [P=4, 2]: column 0 max at 1-2, column 1 at 0,1,3
    assert cp.max_over_window(y).tolist() == [3.0, 5.0]
    grad = jax.grad(lambda y: (cp.max_over_window(y) * jnp.array([10.0, 20.0])).sum())(y)
    assert grad.tolist() == [[0.0, 20.0], [10.0, 0.0], [0.0, 0.0], [0.0, 0.0]]


def test_parameters_are_those_of_nn_conv():
    x = jnp.zeros((4, 32, 32, 3))
    init = nn.initializers.he_normal()
    conv = nn.Conv(6, (5, 5), padding="VALID", kernel_init=init, name="c").init(jax.random.key(7), x)
    fused = cp.ConvPool(6, 5, kernel_init=init, name="c").init(jax.random.key(7), x)
    assert jax.tree.map(jnp.shape, conv) == jax.tree.map(jnp.shape, fused)
    np.testing.assert_array_equal(conv["params"]["kernel"], fused["params"]["kernel"])
    np.testing.assert_array_equal(conv["params"]["bias"], fused["params"]["bias"])


def test_bfloat16_computation_keeps_float32_parameters():
    x = jax.random.normal(jax.random.key(0), (1, 14, 14, 4))
    module = cp.ConvPool(8, 5, dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(1), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    out = module.apply(variables, x)
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 5, 5, 8)
    full = cp.ConvPool(8, 5).apply(variables, x)
    np.testing.assert_allclose(out.astype(jnp.float32), full, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("kwargs,shape,message", [
    ({"activation": "gelu"}, (1, 14, 14, 2), "activation must be one of"),
    ({"pool": "min"}, (1, 14, 14, 2), "pool must be one of"),
    ({}, (1, 5, 5, 2), "too small"),
    ({}, (14, 14, 2), "NHWC images"),
    ({}, (1, 14, 14, 3), "same C"),
])
def test_bad_arguments_are_explained(kwargs, shape, message):
    x = jnp.zeros(shape)
    kernel = jnp.zeros((5, 5, 2, 3))
    with pytest.raises(ValueError, match=message):
        cp.conv_pool(x, kernel, None, **kwargs)


@pytest.mark.parametrize("style", ["modern", "original"])
@pytest.mark.parametrize("size", [28, 32])
def test_lenet5_computes_the_textbook_network(style, size):
    """The whole model equals LeNet-5 written with lax.conv, pooling and dense layers on the same parameters."""
    model = models.get("lenet5", num_classes=10, style=style)
    x = jax.random.normal(jax.random.key(3), (5, size, size, 1))
    variables = model.init(jax.random.key(4), x)
    p = variables["params"]
    act = jnp.tanh if style == "original" else jax.nn.relu
    activation, pool = ("tanh", "avg") if style == "original" else ("relu", "max")

    def forward(p, x):
        if x.shape[1] == 28:
            x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
        x = reference(x, p["stem_conv"]["kernel"], p["stem_conv"]["bias"], activation, pool, 2)
        x = reference(x, p["conv2"]["kernel"], p["conv2"]["bias"], activation, pool, 2).reshape(x.shape[0], -1)
        for name in ("c5", "f6"):
            x = act(x @ p[name]["kernel"] + p[name]["bias"])
        return x @ p["output"]["kernel"] + p["output"]["bias"]

    np.testing.assert_allclose(model.apply(variables, x), forward(p, x), rtol=1e-5, atol=1e-5)
    labels = jnp.arange(5) % 10

    def loss(f):
        return lambda p: -jnp.take_along_axis(jax.nn.log_softmax(f(p)), labels[:, None], 1).mean()

    got = jax.grad(loss(lambda p: model.apply({"params": p}, x)))(p)
    expected = jax.grad(loss(lambda p: forward(p, x)))(p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, expected)
    _, state = model.apply(variables, x, mutable=["intermediates"])
    stages = state["intermediates"]
    assert stages["stage1"][0].shape == (5, 14, 14, 6) and stages["stage2"][0].shape == (5, 5, 5, 16)


def test_a_batch_sharded_input_stays_sharded():
    """Data parallelism: each device computes its own rows; no device gathers the whole batch (8 simulated CPUs)."""
    from cnnlab import parallel

    assert len(jax.devices()) == 8, "tests/conftest.py simulates 8 CPU devices"
    mesh = parallel.make_data_mesh(jax.devices())
    model = models.get("lenet5", num_classes=10)
    variables = jax.device_put(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))), parallel.replicated(mesh))
    x = jax.device_put(jnp.zeros((16, 32, 32, 1)), parallel.batch_sharded(mesh))

    def loss(params, x):
        return model.apply({"params": params}, x).sum()

    hlo = jax.jit(jax.grad(loss)).lower(variables["params"], x).compile().as_text()
    assert "all-gather" not in hlo  # with 8 devices conv_pool keeps the batch its own axis (merge_batch=None)
    assert "all-reduce" in hlo  # the parameter gradients are summed over the devices
