"""Winograd 3x3 convolutions (cnnlab/models/winograd.py) against lax.conv_general_dilated, and the CIFAR ResNet's
conv_impl="winograd" against its default: same parameters, same outputs and gradients up to float rounding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnlab import models
from cnnlab.models import common, winograd


def _reference(x, kernel, stride=1, layout="NHWC"):
    return lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                    dimension_numbers=(layout, "HWIO", layout),
                                    precision=lax.Precision.HIGHEST)


def _relative_error(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))


@pytest.mark.parametrize("tile_size", winograd.TILE_SIZES)
@pytest.mark.parametrize("shape", [pytest.param((3, 8, 8, 4, 6), marks=pytest.mark.slow),
                                   pytest.param((2, 7, 9, 3, 5), marks=pytest.mark.slow), (1, 1, 1, 2, 2)])
def test_conv3x3_matches_lax_forward_and_gradients(tile_size, shape):
    n, height, width, cin, cout = shape  # odd sizes: the last tile is partly padding; 1x1: padding only
    kx, kk, kr = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, height, width, cin))
    kernel = jax.random.normal(kk, (3, 3, cin, cout))
    cotangent = jax.random.normal(kr, (n, height, width, cout))

    def loss(conv):
        return lambda x, kernel: jnp.sum(conv(x, kernel) * cotangent)

    expected = _reference(x, kernel)
    got = winograd.conv3x3(x, kernel, tile_size=tile_size)
    assert got.shape == expected.shape
    assert _relative_error(expected, got) < 2e-5
    expected_grads = jax.grad(loss(_reference), argnums=(0, 1))(x, kernel)
    grads = jax.jit(jax.grad(loss(lambda x, k: winograd.conv3x3(x, k, tile_size=tile_size)), argnums=(0, 1)))(
        x, kernel)
    for want, have in zip(expected_grads, grads):
        assert have.shape == want.shape and _relative_error(want, have) < 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2])
def test_channel_major_conv_matches_lax_including_stride_2(stride):
    kx, kk = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (4, 9, 10, 3))  # [C, H, W, N]
    kernel = jax.random.normal(kk, (3, 3, 4, 5))
    expected = _reference(x, kernel, stride, layout="CHWN")
    got = winograd.conv3x3_channel_major(x, kernel, stride=stride)
    assert got.shape == expected.shape == (5, -(-9 // stride), -(-10 // stride), 3)
    assert _relative_error(expected, got) < 2e-5
    expected_grads = jax.grad(lambda x, k: jnp.sum(_reference(x, k, stride, "CHWN") ** 2), argnums=(0, 1))(x, kernel)
    grads = jax.grad(lambda x, k: jnp.sum(winograd.conv3x3_channel_major(x, k, stride=stride) ** 2),
                     argnums=(0, 1))(x, kernel)
    for want, have in zip(expected_grads, grads):
        assert _relative_error(want, have) < 5e-5


def test_conv3x3_bad_arguments_say_what_is_wrong():
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="tile_size must be one of"):
        winograd.conv3x3(x, jnp.zeros((3, 3, 4, 2)), tile_size=3)
    with pytest.raises(ValueError, match=r"\[3, 3, C_in, C_out\] kernel"):
        winograd.conv3x3(x, jnp.zeros((5, 5, 4, 2)))
    with pytest.raises(ValueError, match="4 channels"):
        winograd.conv3x3(jnp.zeros((1, 8, 8, 3)), jnp.zeros((3, 3, 4, 2)))
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        winograd.conv3x3_channel_major(jnp.zeros((4, 8, 8, 1)), jnp.zeros((3, 3, 4, 2)), stride=3)


@pytest.mark.parametrize("use_bias", [False, True])
def test_winograd_conv_module_has_nn_conv_parameters_and_outputs(use_bias):
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 3))
    reference = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), use_bias=use_bias, kernel_init=common.conv_kernel_init)
    fast = winograd.WinogradConv(5, use_bias=use_bias, kernel_init=common.conv_kernel_init)
    params = reference.init(jax.random.key(3), x)
    fast_params = fast.init(jax.random.key(3), x)
    assert jax.tree.structure(params) == jax.tree.structure(fast_params)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape and bool(jnp.all(a == b)), params,
                                            fast_params)))
    if use_bias:  # make the bias visible in the comparison
        params = jax.tree.map(lambda p: p + 0.5 if p.ndim == 1 else p, params)
    assert _relative_error(reference.apply(params, x), fast.apply(params, x)) < 2e-5
    channel_major = winograd.WinogradConv(5, use_bias=use_bias, layout="CHWN")
    out = channel_major.apply(params, winograd.to_channel_major(x))
    assert _relative_error(reference.apply(params, x), winograd.to_nhwc(out)) < 2e-5


def _tiny_cifar_resnet(conv_impl, dtype=jnp.float32):
    return models.resnet.CifarResNet(num_classes=3, blocks_per_stage=1, widths=(4, 6, 8), conv_impl=conv_impl,
                                     dtype=dtype)


@pytest.mark.slow  # ~2 min of compiling: the Winograd path is an option, not the default
def test_cifar_resnet_winograd_has_the_same_parameters_outputs_and_gradients():
    with jax.enable_x64(True):
        # float64, so that rounding (which batch norm's centring amplifies in the gradients) does not hide a
        # wrong gradient; the algebra must agree to ~1e-12.
        x = jax.random.normal(jax.random.key(4), (4, 8, 8, 3), jnp.float64)
        labels = jnp.array([0, 1, 2, 1])
        results = {}
        for conv_impl in ("xla", "winograd"):
            model = _tiny_cifar_resnet(conv_impl, jnp.float64)
            variables = model.init(jax.random.key(5), x)

            def loss(params, model=model, variables=variables):
                logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                              mutable=["batch_stats", "intermediates"])
                return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), (logits, updates)

            (value, (logits, updates)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
            results[conv_impl] = variables, logits, updates, grads
        (variables, logits, updates, grads), (fast_variables, fast_logits, fast_updates, fast_grads) = (
            results["xla"], results["winograd"])
        assert jax.tree.structure(variables) == jax.tree.structure(fast_variables)
        assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape and bool(jnp.all(a == b)),
                                                variables, fast_variables)))
        np.testing.assert_allclose(fast_logits, logits, rtol=1e-10, atol=1e-12)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12), grads, fast_grads)
        # batch statistics and the sown stage outputs (the report's feature maps) are NHWC and equal
        jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12), updates, fast_updates)


@pytest.mark.slow
def test_cifar_resnet_winograd_float32_and_bfloat16_within_rounding():
    x = jax.random.normal(jax.random.key(6), (4, 8, 8, 3))
    variables = _tiny_cifar_resnet("xla").init(jax.random.key(7), x)
    expected = _tiny_cifar_resnet("xla").apply(variables, x)
    assert _relative_error(expected, _tiny_cifar_resnet("winograd").apply(variables, x)) < 1e-4
    low = _tiny_cifar_resnet("winograd", jnp.bfloat16).apply(variables, x)
    assert low.dtype == jnp.float32 and _relative_error(expected, low) < 0.1


def test_registry_models_accept_conv_impl_and_reject_unknown_ones(trace):
    _, plain = trace("resnet20", (2, 32, 32, 3))
    _, fast = trace("resnet20", (2, 32, 32, 3), conv_impl="winograd")
    assert jax.tree.map(lambda a: a.shape, plain["params"]) == jax.tree.map(lambda a: a.shape, fast["params"])
    model = models.get("resnet20", num_classes=10, conv_impl="fast")
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
