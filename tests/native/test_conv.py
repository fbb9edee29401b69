"""cnnlab.native.conv: oneDNN's convolutions against lax.conv_general_dilated, and the fallback where unbuilt."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnlab import models
from cnnlab.models import densenet
from cnnlab.native import build as build_lib
from cnnlab.native import conv as native_conv

NHWC = ("NHWC", "HWIO", "NHWC")
needs_library = pytest.mark.skipif(not native_conv.available(),
                                   reason=f"oneDNN convolutions unavailable: {native_conv.why_unavailable()}")


def _operands(batch, height, width, cin, cout, kh, kw, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, height, width, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kh, kw, cin, cout)) / np.sqrt(kh * kw * cin), jnp.float32)
    return x, w


def _value_and_grads(conv, x, w, strides, padding, rhs_dilation):
    def loss(x, w):
        y = conv(x, w, strides, padding, rhs_dilation=rhs_dilation, dimension_numbers=NHWC)
        # a fixed, position-dependent cotangent, so that every output element's gradient path is checked
        weights = jnp.sin(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
        return jnp.sum(y * weights), y

    (_, y), (dx, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
    return y, dx, dw


def _relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


GEOMETRIES = [
    # (batch, H, W, cin, cout, kh, kw, strides, padding, rhs_dilation)
    (4, 12, 12, 16, 16, 3, 3, (1, 1), ((1, 1), (1, 1)), (1, 1)),  # the CIFAR ResNet 3x3
    (4, 12, 12, 16, 32, 3, 3, (2, 2), ((1, 1), (1, 1)), (1, 1)),  # its stride-2 downsampling conv
    (3, 9, 7, 5, 6, 1, 1, (1, 1), ((0, 0), (0, 0)), (1, 1)),  # DenseNet's 1x1 bottleneck, odd sizes
    (2, 23, 19, 3, 8, 7, 7, (2, 2), ((3, 3), (3, 3)), (1, 1)),  # an ImageNet stem
    (2, 10, 11, 4, 3, 3, 2, (2, 1), "SAME", (1, 1)),  # asymmetric padding from SAME, non-square kernel
    (2, 13, 13, 4, 5, 3, 3, (1, 1), ((2, 2), (2, 2)), (2, 2)),  # dilation
    (1, 8, 8, 3, 4, 3, 3, (1, 1), "VALID", (1, 1)),  # batch 1, no padding
    (2, 8, 8, 2, 3, 3, 3, (3, 3), ((0, 2), (1, 0)), (1, 1)),  # uneven explicit padding, stride 3
]


@needs_library
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:7])) + f"_s{g[7]}_p{g[8]}")
def test_forward_and_both_gradients_match_lax(geometry):
    batch, height, width, cin, cout, kh, kw, strides, padding, dilation = geometry
    x, w = _operands(batch, height, width, cin, cout, kh, kw)
    expected = _value_and_grads(lax.conv_general_dilated, x, w, strides, padding, dilation)
    got = _value_and_grads(native_conv.conv_general_dilated, x, w, strides, padding, dilation)
    for name, a, b in zip(("output", "input gradient", "kernel gradient"), got, expected):
        assert a.shape == b.shape, name
        assert _relative(a, b) < 2e-5, f"{name}: relative difference {_relative(a, b):.2e}"


@needs_library
def test_the_native_path_really_runs_and_lowers_to_the_ffi_targets():
    x, w = _operands(2, 8, 8, 4, 4, 3, 3)

    def loss(x, w):
        return jnp.sum(native_conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC))

    text = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w).as_text()
    for target in native_conv.TARGETS.values():
        assert target in text
    assert "stablehlo.convolution" not in text
    jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w))
    assert any(line.startswith(("f|", "d|", "w|")) for line in native_conv.implementations())


@pytest.mark.parametrize("case", ["bfloat16", "groups", "nchw", "lhs_dilation", "negative_padding"])
def test_unsupported_convolutions_stay_on_lax(case):
    x, w = _operands(2, 8, 8, 4, 4, 3, 3)
    kwargs = {"dimension_numbers": NHWC}
    padding = ((1, 1), (1, 1))
    if case == "bfloat16":
        x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    elif case == "groups":
        w = w[:, :, :2, :]
        kwargs["feature_group_count"] = 2
    elif case == "nchw":
        x, w = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))
        kwargs["dimension_numbers"] = ("NCHW", "OIHW", "NCHW")
    elif case == "lhs_dilation":
        kwargs["lhs_dilation"] = (2, 2)
    else:
        padding = ((-1, 0), (0, 0))
    text = jax.jit(lambda x, w: native_conv.conv_general_dilated(x, w, (1, 1), padding, **kwargs)).lower(x, w).as_text()
    assert "cnnlab_conv" not in text and "stablehlo.convolution" in text
    np.testing.assert_array_equal(native_conv.conv_general_dilated(x, w, (1, 1), padding, **kwargs),
                                  lax.conv_general_dilated(x, w, (1, 1), padding, **kwargs))


@needs_library
def test_vmap_over_a_seed_axis():
    """Stacked seeds (cnnlab/train/stacked.py, vmap strategy) map the convolution over parameters and inputs."""
    xs = jnp.stack([_operands(2, 8, 8, 4, 4, 3, 3, seed=s)[0] for s in range(3)])
    ws = jnp.stack([_operands(2, 8, 8, 4, 4, 3, 3, seed=s)[1] for s in range(3)])

    def loss(conv):
        return lambda x, w: jnp.sum(conv(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC) ** 2)

    got = jax.jit(jax.vmap(jax.grad(loss(native_conv.conv_general_dilated), argnums=(0, 1))))(xs, ws)
    expected = jax.vmap(jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(xs, ws)
    for a, b in zip(got, expected):
        assert _relative(a, b) < 2e-5


@needs_library
def test_reruns_are_bit_identical():
    x, w = _operands(8, 16, 16, 16, 16, 3, 3)
    first = _value_and_grads(native_conv.conv_general_dilated, x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))
    second = _value_and_grads(native_conv.conv_general_dilated, x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def unbuilt(monkeypatch, tmp_path):
    """This process as it would be without the library (its state is restored afterwards)."""
    monkeypatch.setattr(native_conv, "LIBRARY", tmp_path / "_onednn_conv.so")
    monkeypatch.setattr(native_conv, "_state", {})


def test_without_the_library_everything_falls_back_to_lax(unbuilt):
    assert not native_conv.available()
    assert "python -m cnnlab.native build" in native_conv.why_unavailable()
    assert native_conv.select("auto") == "xla"
    with pytest.raises(RuntimeError, match="conv_impl='onednn' cannot run here.*not built"):
        native_conv.select("onednn")
    x, w = _operands(2, 8, 8, 4, 4, 3, 3)
    got = _value_and_grads(native_conv.conv_general_dilated, x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))
    expected = _value_and_grads(lax.conv_general_dilated, x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    # the models build and run on lax
    model = models.get("resnet20", num_classes=10, conv_impl="auto")
    images = jnp.zeros((2, 16, 16, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    assert "cnnlab_conv" not in jax.jit(lambda v: model.apply(v, images)).lower(variables).as_text()


def test_the_environment_switch_disables_it(monkeypatch):
    monkeypatch.setattr(native_conv, "_state", {})
    monkeypatch.setenv(native_conv.DISABLE_ENV, "0")
    assert native_conv.select("auto") == "xla"
    assert "CNNLAB_NATIVE_CONV=0" in native_conv.why_unavailable()


@needs_library
def test_auto_keeps_lax_for_several_devices_and_onednn_runs_sharded_correctly():
    assert native_conv.select("auto", devices=1) == "onednn"
    assert native_conv.select("auto", devices=2) == "xla"
    assert native_conv.select("auto") == ("onednn" if jax.device_count() == 1 else "xla")
    assert native_conv.select("onednn", devices=8) == "onednn"  # asked for: allowed, and correct (gathered)
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py simulates 8)")
    mesh = jax.make_mesh((4,), ("data",))
    x, w = _operands(8, 8, 8, 4, 4, 3, 3)
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    got = _value_and_grads(native_conv.conv_general_dilated, sharded, w, (1, 1), ((1, 1), (1, 1)), (1, 1))
    expected = _value_and_grads(lax.conv_general_dilated, x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))
    for a, b in zip(got, expected):
        assert _relative(a, b) < 2e-5


def test_conv_impl_is_checked():
    with pytest.raises(ValueError, match="conv_impl must be 'auto', 'onednn' or 'xla', got 'fast'"):
        native_conv.select("fast")


def _small_densenet_bc(**kwargs):
    """DenseNet-BC's code path (CIFAR stem, bottleneck layers, compressed transitions) at a test size."""
    return densenet.DenseNet(block_config=(1, 2, 1), growth_rate=4, num_init_features=8, cifar_stem=True, **kwargs)


@needs_library
@pytest.mark.parametrize("name,size", [
    ("resnet20", 16), ("small_densenet_bc", 8),
    pytest.param("densenet_bc_100_12", 8, marks=pytest.mark.slow),  # ~130 s of compilation
])
def test_models_give_the_same_parameters_outputs_and_gradients(name, size):
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, size, size, 3)), jnp.float32)
    labels = jnp.arange(4) % 10
    results = {}
    for conv_impl in ("xla", "onednn"):
        model = (_small_densenet_bc(num_classes=10, conv_impl=conv_impl) if name == "small_densenet_bc" else
                 models.get(name, num_classes=10, conv_impl=conv_impl))
        variables = model.init(jax.random.key(0), images)

        def loss(params, model=model, variables=variables):
            logits, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(4), labels]), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
        text = jax.jit(loss).lower(variables["params"]).as_text()
        assert ("cnnlab_conv_fwd" in text) == (conv_impl == "onednn")
        results[conv_impl] = variables, logits, grads
    (v_xla, logits_xla, g_xla), (v_dnn, logits_dnn, g_dnn) = results["xla"], results["onednn"]
    assert jax.tree.structure(v_xla) == jax.tree.structure(v_dnn)
    jax.tree.map(np.testing.assert_array_equal, v_xla, v_dnn)
    assert _relative(logits_dnn, logits_xla) < 1e-5
    # batch norm's centring amplifies float32 rounding in some gradient leaves (docs/training.md): compare each
    # leaf relative to its own scale, loosely, and the whole gradient tightly.
    flat_x, flat_d = jax.tree.leaves(g_xla), jax.tree.leaves(g_dnn)
    for a, b in zip(flat_d, flat_x):
        assert _relative(a, b) < 1e-2
    total = np.concatenate([np.ravel(a) for a in flat_x])
    assert np.max(np.abs(np.concatenate([np.ravel(a) for a in flat_d]) - total)) < 1e-4 * np.max(np.abs(total))


def test_build_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_ONEDNN_ROOT", str(tmp_path))
    monkeypatch.setattr(build_lib.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(build_lib.sysconfig, "get_config_var", lambda name: str(tmp_path))
    monkeypatch.setattr(build_lib.pathlib.Path, "exists", lambda self: False)
    with pytest.raises(build_lib.BuildError, match="oneDNN not found.*pip install onednn-cpu-gomp"):
        build_lib.find_onednn()


def test_build_needs_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-cnnlab")
    with pytest.raises(build_lib.BuildError, match="no C\\+\\+ compiler 'no-such-compiler-cnnlab'"):
        build_lib.command(tmp_path, tmp_path / "out.so")


def test_status_command():
    done = subprocess.run([sys.executable, "-m", "cnnlab.native", "status"], capture_output=True, text=True)
    assert done.stdout.startswith("oneDNN convolutions: ")
    assert done.returncode == (0 if native_conv.available() else 1)
    assert ("available" in done.stdout) if native_conv.available() else (native_conv.why_unavailable() in done.stdout)


@needs_library
@pytest.mark.slow
def test_a_training_run_ends_within_float_tolerance_of_the_lax_run(tmp_path):
    """5 SGD steps of ResNet-20 through the real loop: oneDNN's run against lax's (about 60 s of compiling).

    Few steps, because float32 training amplifies rounding: after 20 steps of lr 0.02 on one batch, the parameters
    of the oneDNN and lax runs differ by up to 38% of a leaf's largest value, and so do those of two pure-JAX
    implementations (Winograd against lax: 36%). After 5 steps of lr 0.01 the test losses agree to 1e-4."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "train"))
    from _train_helpers import tiny_config

    from cnnlab.jobs import train_and_evaluate

    results = {}
    for conv_impl in ("xla", "auto"):
        config = tiny_config(model="resnet20", num_train_steps=5, learning_rate=0.01)
        if conv_impl == "xla":
            config.model_overrides.conv_impl = "xla"
        results[conv_impl] = train_and_evaluate(config, str(tmp_path / conv_impl))
    assert results["auto"]["details"]["conv_impl"] == "onednn" and results["xla"]["details"]["conv_impl"] == "xla"
    assert abs(results["auto"]["test"]["loss"] - results["xla"]["test"]["loss"]) < 1e-3 * results["xla"]["test"]["loss"]
    assert abs(results["auto"]["test"]["accuracy"] - results["xla"]["test"]["accuracy"]) <= 2 / 359
