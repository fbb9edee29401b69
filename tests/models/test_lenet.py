"""LeNet-5: parameter count by hand, shapes, both styles, padding of 28x28, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnlab import models


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_lenet5_has_61706_parameters_for_10_classes():
    # C1 5*5*1*6+6, C3 5*5*6*16+16, C5 400*120+120, F6 120*84+84, output 84*10+10 (LeCun et al. 1998).
    expected = (5 * 5 * 1 * 6 + 6) + (5 * 5 * 6 * 16 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert expected == 61_706
    for style in ("modern", "original"):
        model = models.get("lenet5", num_classes=10, style=style)
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
        assert set(variables) == {"params"}
        assert _count(variables["params"]) == 61_706


@pytest.mark.parametrize("style", ["modern", "original"])
@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (3, 32, 32, 3)])
def test_lenet5_forward_shapes_and_stages(style, shape):
    model = models.get("lenet5", num_classes=7, style=style)
    x = jax.random.normal(jax.random.key(1), shape)
    variables = model.init(jax.random.key(0), x, train=False)
    logits, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    stages = state["intermediates"]
    assert stages["stage1"][0].shape == (3, 14, 14, 6)  # 28x28 is padded to 32x32 first
    assert stages["stage2"][0].shape == (3, 5, 5, 16)
    kernel = models.first_conv_kernel(variables["params"])
    assert kernel.shape == (5, 5, shape[-1], 6)
    np.testing.assert_array_equal(kernel, variables["params"]["stem_conv"]["kernel"])


def test_lenet5_original_and_modern_differ_in_activation_and_pooling():
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 1))
    modern = models.get("lenet5", num_classes=10, style="modern")
    original = models.get("lenet5", num_classes=10, style="original")
    variables = modern.init(jax.random.key(0), x)
    _, a = modern.apply(variables, x, mutable=["intermediates"])
    _, b = original.apply(variables, x, mutable=["intermediates"])
    conv = jax.lax.conv_general_dilated(
        x, variables["params"]["stem_conv"]["kernel"], (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + variables["params"]["stem_conv"]["bias"]
    relu_max = jnp.max(jnp.maximum(conv, 0).reshape(2, 14, 2, 14, 2, 6), axis=(2, 4))
    tanh_avg = jnp.mean(jnp.tanh(conv).reshape(2, 14, 2, 14, 2, 6), axis=(2, 4))
    np.testing.assert_allclose(a["intermediates"]["stage1"][0], relu_max, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b["intermediates"]["stage1"][0], tanh_avg, rtol=1e-5, atol=1e-5)


def test_lenet5_pads_28_to_32_with_zeros():
    model = models.get("lenet5", num_classes=10)
    x28 = jax.random.normal(jax.random.key(3), (2, 28, 28, 1))
    x32 = jnp.pad(x28, ((0, 0), (2, 2), (2, 2), (0, 0)))
    variables = model.init(jax.random.key(0), x28)
    np.testing.assert_allclose(model.apply(variables, x28), model.apply(variables, x32), rtol=1e-6, atol=1e-6)


def test_registry_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="lenet5"):
        models.get("lenet6", num_classes=10)
    assert "lenet5" in models.names()
    with pytest.raises(TypeError, match="Accepted overrides"):
        models.get("lenet5", num_classes=10, depth=3)
    with pytest.raises(ValueError, match="num_classes"):
        models.get("lenet5", num_classes=0)


def test_lenet5_bad_inputs():
    model = models.get("lenet5", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    with pytest.raises(ValueError, match="rank 4"):
        model.apply(variables, jnp.zeros((28, 28, 1)))
    with pytest.raises(ValueError, match="smallest accepted size 28x28"):
        model.apply(variables, jnp.zeros((1, 24, 24, 1)))
    with pytest.raises(ValueError, match="expects 1 input channel"):
        model.apply(variables, jnp.zeros((1, 28, 28, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        model.apply(variables, jnp.zeros((1, 28, 28, 1), jnp.uint8))
    with pytest.raises(ValueError, match="style"):
        models.get("lenet5", num_classes=10, style="fancy").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
