"""Exact parameter counts for every registered model.

Each expected count is computed here by independent layer-by-layer arithmetic from the published
architecture (not from the model code), and for the ImageNet models also compared with the number torchvision
publishes in its weights metadata ("num_params" in torchvision/models/{alexnet,vgg,googlenet,resnet,densenet}.py).
Counted like torchvision's ``sum(p.numel() for p in model.parameters())``: trainable parameters only (batch-norm
scale and bias count, running statistics do not). Models are traced with jax.eval_shape: nothing is allocated.
"""

import jax
import numpy as np
import pytest

from cnnlab import models


def conv(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def bn(c):
    return 2 * c


def dense(i, o):
    return i * o + o


@pytest.fixture
def count(trace):
    def run(name, shape, num_classes, **overrides):
        _, variables = trace(name, shape, num_classes, **overrides)
        return models.count_params(variables["params"]), variables
    return run


# torchvision's published num_params (weights metadata), 1000 classes, 3-channel 224x224 input.
TORCHVISION = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928,
}


def alexnet_count(classes, cin=3):
    convs = conv(11, cin, 64) + conv(5, 64, 192) + conv(3, 192, 384) + conv(3, 384, 256) + conv(3, 256, 256)
    return convs + dense(256 * 6 * 6, 4096) + dense(4096, 4096) + dense(4096, classes)


VGG_LAYERS = {  # conv widths per block (Table 1 of Simonyan & Zisserman), A, B, D, E
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def vgg_count(name, classes, batch_norm):
    total, cin = 0, 3
    for block in VGG_LAYERS[name]:
        for width in block:
            total += conv(3, cin, width) + (bn(width) if batch_norm else 0)
            cin = width
    return total + dense(512 * 7 * 7, 4096) + dense(4096, 4096) + dense(4096, classes)


def resnet_count(blocks, bottleneck, classes, stem_k=7, cin=3):
    total = conv(stem_k, cin, 64, bias=False) + bn(64)
    inplanes = 64
    for stage, n in enumerate(blocks):
        width = 64 * 2**stage
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            if bottleneck:
                out = 4 * width
                total += conv(1, inplanes, width, False) + bn(width) + conv(3, width, width, False) + bn(width)
                total += conv(1, width, out, False) + bn(out)
            else:
                out = width
                total += conv(3, inplanes, width, False) + bn(width) + conv(3, width, width, False) + bn(width)
            if stride != 1 or inplanes != out:
                total += conv(1, inplanes, out, False) + bn(out)
            inplanes = out
    return total + dense(inplanes, classes)


def cifar_resnet_count(n, classes, option_b=False):
    total = conv(3, 3, 16, False) + bn(16)
    cin = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(3, cin, width, False) + bn(width) + conv(3, width, width, False) + bn(width)
            if cin != width and option_b:
                total += conv(1, cin, width, False) + bn(width)
            cin = width
    return total + dense(64, classes)


def densenet_count(blocks, growth, init, classes, imagenet_stem=True, bn_size=4):
    total = conv(7 if imagenet_stem else 3, 3, init, False) + (bn(init) if imagenet_stem else 0)
    c = init
    for i, n in enumerate(blocks):
        for _ in range(n):
            total += bn(c) + conv(1, c, bn_size * growth, False) + bn(bn_size * growth)
            total += conv(3, bn_size * growth, growth, False)
            c += growth
        if i != len(blocks) - 1:
            total += bn(c) + conv(1, c, c // 2, False)
            c //= 2
    return total + bn(c) + dense(c, classes)


INCEPTION = [  # in, 1x1, 3x3red, 3x3, 5x5red, 5x5, pool proj (Table 1 of Szegedy et al.)
    (192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64),
    (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64),
    (512, 112, 144, 288, 32, 64, 64), (528, 256, 160, 320, 32, 128, 128),
    (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128),
]


def googlenet_count(classes, aux=False, k5=3):
    basic = lambda k, cin, cout: conv(k, cin, cout, False) + bn(cout)
    total = basic(7, 3, 64) + basic(1, 64, 64) + basic(3, 64, 192)
    previous_out = 192
    for cin, c1, r3, c3, r5, c5, pp in INCEPTION:
        assert cin == previous_out  # the table's input widths chain: each module gets the previous concat
        previous_out = c1 + c3 + c5 + pp
        total += basic(1, cin, c1) + basic(1, cin, r3) + basic(3, r3, c3) + basic(1, cin, r5) + basic(k5, r5, c5)
        total += basic(1, cin, pp)
    total += dense(1024, classes)
    if aux:
        for cin in (512, 528):
            total += basic(1, cin, 128) + dense(128 * 4 * 4, 1024) + dense(1024, classes)
    return total


IMAGENET_EXPECTED = {
    "alexnet": alexnet_count(1000),
    **{f"{v}{s}": vgg_count(v, 1000, bool(s)) for v in VGG_LAYERS for s in ("", "_bn")},
    "googlenet": googlenet_count(1000),
    "resnet18": resnet_count((2, 2, 2, 2), False, 1000),
    "resnet34": resnet_count((3, 4, 6, 3), False, 1000),
    "resnet50": resnet_count((3, 4, 6, 3), True, 1000),
    "resnet101": resnet_count((3, 4, 23, 3), True, 1000),
    "resnet152": resnet_count((3, 8, 36, 3), True, 1000),
    "densenet121": densenet_count((6, 12, 24, 16), 32, 64, 1000),
    "densenet169": densenet_count((6, 12, 32, 32), 32, 64, 1000),
    "densenet201": densenet_count((6, 12, 48, 32), 32, 64, 1000),
}

CIFAR_EXPECTED = {
    "resnet20": cifar_resnet_count(3, 10), "resnet32": cifar_resnet_count(5, 10),
    "resnet44": cifar_resnet_count(7, 10), "resnet56": cifar_resnet_count(9, 10),
    "resnet110": cifar_resnet_count(18, 10),
    "densenet_bc_100_12": densenet_count((16, 16, 16), 12, 24, 10, imagenet_stem=False),
    "alexnet_cifar": (conv(3, 3, 64) + conv(3, 64, 192) + conv(3, 192, 384) + conv(3, 384, 256)
                      + conv(3, 256, 256) + dense(256 * 4 * 4, 1024) + dense(1024, 1024) + dense(1024, 10)),
}


def test_every_name_has_an_expected_count():
    assert set(IMAGENET_EXPECTED) | set(CIFAR_EXPECTED) | {"lenet5"} == set(models.names())


def test_arithmetic_reproduces_torchvision_published_counts():
    for name, published in TORCHVISION.items():
        assert IMAGENET_EXPECTED[name] == published, name


@pytest.mark.parametrize("name", sorted(IMAGENET_EXPECTED))
def test_imagenet_model_counts(name, count):
    got, _ = count(name, (2, 224, 224, 3), 1000)
    assert got == IMAGENET_EXPECTED[name] == TORCHVISION[name]


@pytest.mark.parametrize("name", sorted(CIFAR_EXPECTED))
def test_cifar_model_counts(name, count):
    got, _ = count(name, (2, 32, 32, 3), 10)
    assert got == CIFAR_EXPECTED[name]


def test_cifar_counts_match_the_papers_rounded_figures():
    # He et al. 2016 Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M; Huang et al. 2017 Table 2: 0.8M.
    papers = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
              "densenet_bc_100_12": 0.8}
    for name, millions in papers.items():
        decimals = len(str(millions).split(".")[1])
        assert round(CIFAR_EXPECTED[name] / 1e6, decimals) == millions, name
    assert CIFAR_EXPECTED["resnet20"] == 269_722
    assert CIFAR_EXPECTED["densenet_bc_100_12"] == 769_162


def test_resnet20_option_b_projection_shortcuts(count):
    got, _ = count("resnet20", (1, 32, 32, 3), 10, shortcut="B")
    assert got == cifar_resnet_count(3, 10, option_b=True) == 272_474


def test_googlenet_with_aux_heads_and_paper_5x5(count):
    got, _ = count("googlenet", (1, 224, 224, 3), 1000, aux_logits=True)
    assert got == googlenet_count(1000, aux=True) == 13_004_888
    got, _ = count("googlenet", (1, 224, 224, 3), 1000, branch5x5_kernel=5)
    assert got == googlenet_count(1000, k5=5)


def test_small_input_stems_and_input_channels_change_counts_as_expected(count):
    got, _ = count("resnet18", (1, 32, 32, 3), 10, small_input=True)
    assert got == resnet_count((2, 2, 2, 2), False, 10, stem_k=3)
    got, _ = count("resnet50", (1, 28, 28, 1), 10)
    assert got == resnet_count((3, 4, 6, 3), True, 10, cin=1)
    got, _ = count("alexnet", (1, 224, 224, 1), 10)
    assert got == alexnet_count(10, cin=1)
    got, _ = count("densenet121", (1, 32, 32, 3), 10, small_input=True)
    expected = densenet_count((6, 12, 24, 16), 32, 64, 10) - conv(7, 3, 64, False) + conv(3, 3, 64, False)
    assert got == expected


def test_batch_norm_models_have_matching_statistics_and_others_none(count):
    for name in ["lenet5", "alexnet_cifar", "vgg11"]:
        _, variables = count(name, (2, 32, 32, 3), 10)
        assert variables["batch_stats"] == {}, name
    for name in ["vgg11_bn", "resnet20", "densenet_bc_100_12", "googlenet", "resnet18"]:
        _, variables = count(name, (2, 32, 32, 3), 10)
        scales = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
                     if "scale" in jax.tree_util.keystr(path))
        stats = models.count_params(variables["batch_stats"])
        assert stats == 2 * scales > 0, name
