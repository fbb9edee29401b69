"""Output shapes for every model and input size, minimum input sizes, stages, stems (all via jax.eval_shape)."""

import jax
import jax.numpy as jnp
import pytest

from cnnlab import models
from cnnlab.models import common

INPUTS = {"28x28x1": (2, 28, 28, 1), "32x32x3": (2, 32, 32, 3), "224x224x3": (2, 224, 224, 3)}

# Smallest accepted side: torchvision's published min_size for its ImageNet models (weights metadata:
# alexnet 63, vgg 32, googlenet 15, resnet 1, densenet 29); lenet5 takes 28 or 32 only; the CIFAR models by
# their pools: alexnet_cifar three 2x2 pools -> 8, densenet_bc two 2x2 transition pools -> 4, CIFAR ResNets pad
# everything -> 1.
MIN_SIZE = {
    "lenet5": 28, "alexnet": 63, "alexnet_cifar": 8, "googlenet": 15, "densenet_bc_100_12": 4,
    **{f"vgg{d}{s}": 32 for d in (11, 13, 16, 19) for s in ("", "_bn")},
    **{f"resnet{d}": 1 for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110)},
    **{f"densenet{d}": 29 for d in (121, 169, 201)},
}
SMALL_INPUT_MIN_SIZE = {"googlenet": 4, "densenet121": 8, "densenet169": 8, "densenet201": 8,
                        "resnet18": 1, "resnet50": 1}


def trace_uncached(name, shape, **overrides):
    model = models.get(name, num_classes=10, **overrides)
    return jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False,
                                       mutable=["params", "batch_stats", "intermediates"]))


def accepts(name, side):
    if name == "lenet5":
        return side in (28, 32)
    return side >= MIN_SIZE[name]


def test_min_size_table_covers_every_model():
    assert set(MIN_SIZE) == set(models.names())
    for name, size in MIN_SIZE.items():
        assert models.min_input_size(name) == size, name
    for name, size in SMALL_INPUT_MIN_SIZE.items():
        assert models.min_input_size(name, small_input=True) == size, name


@pytest.mark.parametrize("input_name", sorted(INPUTS))
@pytest.mark.parametrize("name", models.names())
def test_output_shape_or_clear_error(name, input_name, trace):
    shape = INPUTS[input_name]
    classes = 1000 if shape[1] == 224 else 10  # ImageNet size with ImageNet classes (shares the count traces)
    if accepts(name, shape[1]):
        logits, _ = trace(name, shape, classes)
        assert logits.shape == (2, classes) and logits.dtype == jnp.float32
    else:
        with pytest.raises(ValueError, match=f"smallest (accepted size|size it accepts is) {MIN_SIZE[name]}x"):
            trace(name, shape, classes)


@pytest.mark.parametrize("name", ["googlenet", "densenet121", "resnet18"])
def test_small_input_stems_accept_28x28(name, trace):
    logits, variables = trace(name, (2, 28, 28, 1), small_input=True)
    assert logits.shape == (2, 10)
    first_stage = variables["intermediates"]["stage1"][0]
    # the small stem does not downsample before stage 1 (28 -> 28 for ResNet, DenseNet's block 1; GoogLeNet's
    # stage 1 ends with its second max-pool: 28 -> 14)
    assert first_stage.shape[1] == (14 if name == "googlenet" else 28)


STAGES_224 = {  # last stage's output at 224x224x3 (the published architectures' final feature maps)
    "alexnet": (2, 6, 6, 256), "vgg16": (2, 7, 7, 512), "vgg19_bn": (2, 7, 7, 512),
    "googlenet": (2, 7, 7, 1024), "resnet18": (2, 7, 7, 512), "resnet50": (2, 7, 7, 2048),
    "densenet121": (2, 7, 7, 1024), "densenet169": (2, 7, 7, 1664), "densenet201": (2, 7, 7, 1920),
}
STAGES_32 = {
    "lenet5": [(2, 14, 14, 6), (2, 5, 5, 16)],
    "alexnet_cifar": [(2, 16, 16, 64), (2, 8, 8, 192), (2, 4, 4, 256)],
    "resnet20": [(2, 32, 32, 16), (2, 16, 16, 32), (2, 8, 8, 64)],
    "resnet110": [(2, 32, 32, 16), (2, 16, 16, 32), (2, 8, 8, 64)],
    "densenet_bc_100_12": [(2, 32, 32, 216), (2, 16, 16, 300), (2, 8, 8, 342)],
    "vgg11": [(2, 16, 16, 64), (2, 8, 8, 128), (2, 4, 4, 256), (2, 2, 2, 512), (2, 1, 1, 512)],
}
NUM_STAGES = {"lenet5": 2, "alexnet": 3, "alexnet_cifar": 3, "googlenet": 4, "densenet_bc_100_12": 3,
              **{n: 5 for n in models.names() if n.startswith("vgg")},
              **{f"resnet{d}": 4 for d in (18, 34, 50, 101, 152)}, **{f"resnet{d}": 3 for d in (20, 32, 44, 56, 110)},
              **{f"densenet{d}": 4 for d in (121, 169, 201)}}


@pytest.mark.parametrize("name", models.names())
def test_every_model_sows_its_stages(name, trace):
    side = 224 if MIN_SIZE[name] > 32 else 32
    _, variables = trace(name, (2, side, side, 3), 1000 if side == 224 else 10)
    stages = variables["intermediates"]
    assert list(stages) == [f"stage{i}" for i in range(1, NUM_STAGES[name] + 1)]
    sides = [stages[f"stage{i}"][0].shape[1] for i in range(1, NUM_STAGES[name] + 1)]
    assert sides == sorted(sides, reverse=True)  # resolution never grows
    if side == 224 and name in STAGES_224:
        assert stages[f"stage{NUM_STAGES[name]}"][0].shape == STAGES_224[name]
    if side == 32 and name in STAGES_32:
        assert [s[0].shape for s in stages.values()] == STAGES_32[name]


STEMS = {"lenet5": (5, 5, 3, 6), "alexnet": (11, 11, 3, 64), "alexnet_cifar": (3, 3, 3, 64),
         "googlenet": (7, 7, 3, 64), "densenet_bc_100_12": (3, 3, 3, 24),
         **{n: (3, 3, 3, 64) for n in models.names() if n.startswith("vgg")},
         **{f"resnet{d}": (7, 7, 3, 64) for d in (18, 34, 50, 101, 152)},
         **{f"resnet{d}": (3, 3, 3, 16) for d in (20, 32, 44, 56, 110)},
         **{f"densenet{d}": (7, 7, 3, 64) for d in (121, 169, 201)}}


@pytest.mark.parametrize("name", models.names())
def test_first_conv_kernel_is_the_stem(name, trace):
    side = 224 if MIN_SIZE[name] > 32 else 32
    _, variables = trace(name, (2, side, side, 3), 1000 if side == 224 else 10)
    kernel = models.first_conv_kernel(variables["params"])
    assert kernel.shape == STEMS[name]
    # key order must not matter: jax.tree round trips sort dict keys
    resorted = jax.tree.map(lambda x: x, variables["params"])
    assert models.first_conv_kernel(resorted).shape == STEMS[name]
    assert models.first_conv_kernel(variables).shape == STEMS[name]


def test_first_conv_kernel_bad_input():
    with pytest.raises(ValueError, match="stem_conv"):
        models.first_conv_kernel({"Dense_0": {"kernel": jnp.zeros((3, 4))}})


@pytest.mark.parametrize("name,overrides", [
    ("alexnet", {}), ("alexnet_cifar", {}), ("vgg11", {}), ("googlenet", {}), ("googlenet", {"small_input": True}),
    ("densenet121", {}), ("densenet121", {"small_input": True}), ("densenet_bc_100_12", {}),
])
def test_min_size_is_tight(name, overrides, monkeypatch):
    """At min_size the architecture runs; one pixel less it breaks (checked with our size check switched off)."""
    size = models.min_input_size(name, **overrides)
    logits, _ = trace_uncached(name, (1, size, size, 3), **overrides)
    assert logits.shape == (1, 10)
    with pytest.raises(ValueError, match=f"smallest size it accepts is {size}x{size}"):
        trace_uncached(name, (1, size - 1, size - 1, 3), **overrides)
    original = common.check_images
    monkeypatch.setattr(common, "check_images", lambda x, **kw: original(x, **{**kw, "min_size": 1}))
    try:
        _, variables = trace_uncached(name, (1, size - 1, size - 1, 3), **overrides)
    except Exception:  # the unchecked architecture fails somewhere inside: fine, that is the point
        return
    empty = [k for k, v in variables["intermediates"].items() if 0 in v[0].shape]
    assert empty, f"{name} still produced non-empty feature maps at {size - 1}x{size - 1}"
