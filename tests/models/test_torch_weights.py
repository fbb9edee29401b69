"""torchvision weights in and out (cnnlab.models.from_torch / to_torch): exact numbers, exact round trips, clear
errors.

The numerical proof needs torch and torchvision (the `bench` extra; skipped without them): torchvision's model with
random weights (``weights=None``: nothing downloads) and randomised BN statistics and affine parameters, converted,
must give torch's eval-mode logits to float32 round-off: max |cnnlab - torch| <= RTOL * max |torch logits|, with
RTOL = 1e-5 (about 80 float32 ulps of the largest logit; measured 4e-7 .. 1.2e-6, see docs/models.md), at
224x224 and at the odd non-square 161x197. ResNet-18, VGG-11-BN, GoogLeNet and DenseNet-121 run by default, the
other ImageNet-size models with --runslow.
"""

import glob
import importlib
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnlab import models
from cnnlab.models import torch_weights

RTOL = 1e-5
SIZES = ((224, 224), (161, 197))
DEFAULT_MODELS = ("resnet18", "vgg11_bn", "googlenet", "densenet121")
SLOW_MODELS = tuple(name for name in models.TORCHVISION_MODELS if name not in DEFAULT_MODELS)


def import_torchvision():
    """torchvision, importable beside the CPU build of torch, or a skip.

    torchvision 0.28.0 (the release pinned to torch 2.13.0) is published as a CUDA build: its compiled ops
    (torchvision/_C.so) need libtorch_cuda and do not load beside torch 2.13.0+cpu. torchvision then still
    registers fake (meta) kernels for two of those ops at import, and that import fails ("operator
    torchvision::nms does not exist"). The classification models never call these ops, so when _C.so cannot be
    loaded the two operator schemas are declared (no kernels) before the import; nothing else changes.
    """
    torch = pytest.importorskip("torch")
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        pytest.skip("torchvision is not installed (bash scripts/install.sh --with-peers)")
    if "torchvision" not in sys.modules:
        libraries = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
        try:
            if not libraries:
                raise OSError("no _C library")
            torch.ops.load_library(libraries[0])
        except OSError:
            if not hasattr(torch.ops.torchvision, "nms"):
                library = torch.library.Library("torchvision", "FRAGMENT")
                for op in ("nms", "qnms"):
                    library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                import_torchvision.library = library  # keep the registration alive
    return importlib.import_module("torchvision")


def torchvision_model(name: str, seed: int = 0):
    """torchvision's ``name`` in eval mode, random weights, BN statistics and affine parameters randomised."""
    import torch

    torchvision = import_torchvision()
    torch.manual_seed(seed)
    kwargs = {"init_weights": True} if name == "googlenet" else {}  # its default, said explicitly (no warning)
    model = getattr(torchvision.models, name)(weights=None, **kwargs).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
    return model


def cnnlab_logits(name: str, variables, images_nchw: np.ndarray) -> np.ndarray:
    aux = {"aux_logits": True} if "aux1" in variables["params"] else {}
    num_classes = variables["params"][torch_weights.head_path(name)[0]]["kernel"].shape[-1]
    model = models.get(name, num_classes=num_classes, **aux)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return np.asarray(apply(variables, jnp.asarray(images_nchw.transpose(0, 2, 3, 1))))


def check_against_torchvision(name: str) -> list[float]:
    import torch

    model = torchvision_model(name)
    state_dict = model.state_dict()
    variables = models.from_torch(name, state_dict)
    relative = []
    for index, (height, width) in enumerate(SIZES):
        images = np.random.default_rng(index).standard_normal((2, 3, height, width)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(images)).numpy()
        got = cnnlab_logits(name, variables, images)
        assert got.shape == expected.shape == (2, 1000)
        difference = float(np.abs(got - expected).max())
        relative.append(difference / float(np.abs(expected).max()))
        assert difference <= RTOL * np.abs(expected).max(), (name, (height, width), difference, relative[-1])
    # The round trip gives torchvision's state dict back, bit for bit, names and order included.
    back = models.to_torch(name, variables)
    assert list(back) == list(state_dict)
    for key, tensor in state_dict.items():
        original = tensor.numpy()
        assert back[key].dtype == original.dtype and back[key].shape == original.shape, key
        np.testing.assert_array_equal(back[key], original, err_msg=key)
    return relative


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_same_logits_as_torchvision_and_exact_round_trip(name):
    check_against_torchvision(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_MODELS)
def test_same_logits_as_torchvision_and_exact_round_trip_slow(name):
    check_against_torchvision(name)


def test_the_model_list_is_every_imagenet_size_model():
    assert set(models.TORCHVISION_MODELS) == set(models.names()) - set(models.SMALL_IMAGE_MODELS)


# ---------------------------------------------------------------------------------------------------------------
# Without torch: state dicts written by to_torch from random cnnlab variables.


def random_variables(name: str, *, num_classes: int = 1000, input_channels: int = 3, seed: int = 0, **overrides):
    model = models.get(name, num_classes=num_classes, **overrides)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, input_channels)),
                                               train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), dict(shapes))


@pytest.fixture(scope="module")
def resnet18_state_dict():
    return models.to_torch("resnet18", random_variables("resnet18"))


def test_round_trip_from_cnnlab_side_and_names(resnet18_state_dict):
    variables = random_variables("resnet18")
    state_dict = models.to_torch("resnet18", variables)
    assert resnet18_state_dict["conv1.weight"].shape == (64, 3, 7, 7)
    assert state_dict["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state_dict["fc.weight"].shape == (1000, 512)
    assert state_dict["bn1.num_batches_tracked"].dtype == np.int64 and state_dict["bn1.num_batches_tracked"] == 0
    back = models.from_torch("resnet18", state_dict)
    jax.tree.map(np.testing.assert_array_equal, back, variables)
    # Layouts: OIHW -> HWIO, [out, in] -> [in, out].
    np.testing.assert_array_equal(state_dict["conv1.weight"].transpose(2, 3, 1, 0),
                                  variables["params"]["stem_conv"]["kernel"])
    np.testing.assert_array_equal(state_dict["fc.weight"].T, variables["params"]["fc"]["kernel"])
    np.testing.assert_array_equal(state_dict["bn1.running_var"], variables["batch_stats"]["stem_bn"]["var"])


def test_flattened_features_are_permuted_from_chw_to_hwc():
    # AlexNet's first dense layer reads a 6x6x256 map: torch row c*36 + h*6 + w is cnnlab row (h*6 + w)*256 + c.
    variables = random_variables("alexnet", num_classes=5)
    state_dict = models.to_torch("alexnet", variables)
    kernel = variables["params"]["fc1"]["kernel"]  # [6*6*256, 4096]
    weight = state_dict["classifier.1.weight"]    # [4096, 256*6*6]
    for c, h, w in ((0, 0, 1), (3, 2, 5), (255, 5, 5)):
        np.testing.assert_array_equal(weight[:, c * 36 + h * 6 + w], kernel[(h * 6 + w) * 256 + c])


def test_class_count_and_input_channels_come_from_the_state_dict():
    state_dict = models.to_torch("resnet18", random_variables("resnet18", num_classes=10, input_channels=1))
    variables = models.from_torch("resnet18", state_dict)
    assert variables["params"]["fc"]["kernel"].shape == (512, 10)
    assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 1, 64)
    logits = models.get("resnet18", num_classes=10).apply(variables, jnp.zeros((1, 32, 32, 1)), train=False)
    assert logits.shape == (1, 10)


def test_num_batches_tracked_is_optional_on_load(resnet18_state_dict):
    without = {k: v for k, v in resnet18_state_dict.items() if not k.endswith("num_batches_tracked")}
    a = models.from_torch("resnet18", without)
    b = models.from_torch("resnet18", resnet18_state_dict)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_missing_tensor_is_named(resnet18_state_dict):
    state_dict = dict(resnet18_state_dict)
    del state_dict["layer2.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing tensor 'layer2.1.bn2.running_var' \(torch shape \(128,\)"):
        models.from_torch("resnet18", state_dict)


def test_extra_tensor_is_named(resnet18_state_dict):
    state_dict = {**resnet18_state_dict, "layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected tensor 'layer5.0.conv1.weight'"):
        models.from_torch("resnet18", state_dict)


def test_misshapen_tensor_is_named(resnet18_state_dict):
    state_dict = {**resnet18_state_dict, "layer1.0.conv2.weight": np.zeros((64, 64, 3, 2), np.float32)}
    with pytest.raises(ValueError, match=r"'layer1.0.conv2.weight' has shape \(64, 64, 3, 2\), expected "
                                         r"\(64, 64, 3, 3\)"):
        models.from_torch("resnet18", state_dict)


def test_wrong_model_and_wrong_input_errors(resnet18_state_dict):
    with pytest.raises(ValueError, match=r"'layer1.0.conv1.weight' has shape \(64, 64, 3, 3\), "
                                         r"expected \(64, 64, 1, 1\)"):
        models.from_torch("resnet50", resnet18_state_dict)  # basic blocks offered to a bottleneck model
    with pytest.raises(ValueError, match="No torchvision mapping for model 'resnet20'"):
        models.from_torch("resnet20", resnet18_state_dict)
    with pytest.raises(ValueError, match="strip that prefix"):
        models.from_torch("resnet18", {f"module.{k}": v for k, v in resnet18_state_dict.items()})
    with pytest.raises(TypeError, match="mapping of tensor names"):
        models.from_torch("resnet18", [1, 2])


def test_to_torch_names_the_bad_leaf():
    variables = random_variables("resnet18")
    variables["params"]["stage1_block1"]["conv1"]["kernel"] = np.zeros((3, 3, 64, 65), np.float32)
    with pytest.raises(ValueError, match=r"leaf params/stage1_block1/conv1/kernel has shape \(3, 3, 64, 65\)"):
        models.to_torch("resnet18", variables)
    variables = random_variables("resnet18")
    del variables["batch_stats"]["stage4_block2"]["bn2"]["mean"]
    with pytest.raises(ValueError, match="missing leaf batch_stats/stage4_block2/bn2/mean"):
        models.to_torch("resnet18", variables)


def test_googlenet_aux_heads_are_kept_or_dropped():
    with_aux = random_variables("googlenet", num_classes=7, aux_logits=True)
    state_dict = models.to_torch("googlenet", with_aux)
    assert state_dict["aux1.fc1.weight"].shape == (1024, 2048)  # 128 x 4 x 4 flattened, C-major in torch
    assert "aux1" in models.from_torch("googlenet", state_dict)["params"]
    dropped = models.from_torch("googlenet", state_dict, aux_logits=False)
    assert "aux1" not in dropped["params"] and "aux2" not in dropped["params"]
    without = {k: v for k, v in state_dict.items() if not k.startswith("aux")}
    jax.tree.map(np.testing.assert_array_equal, models.from_torch("googlenet", without), dropped)
    with pytest.raises(ValueError, match="aux_logits=True but the state dict has no aux"):
        models.from_torch("googlenet", without, aux_logits=True)


@pytest.mark.slow
def test_torch_tensors_are_accepted_and_the_cli_converts_a_pth_file(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    state_dict = models.to_torch("vgg11", random_variables("vgg11", num_classes=3))
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    torch.save(tensors, tmp_path / "vgg11.pth")
    out = tmp_path / "converted.npz"
    assert torch_weights.main(["convert", "--model=vgg11", f"--torch_file={tmp_path / 'vgg11.pth'}",
                               f"--out={out}"]) == 0
    assert "vgg11: 22 tensors converted" in capsys.readouterr().out
    variables, meta = models.load_variables(str(out))
    assert meta["model"] == "vgg11" and meta["num_classes"] == 3 and meta["input_channels"] == 3
    jax.tree.map(np.testing.assert_array_equal, variables, models.from_torch("vgg11", tensors))


def test_cli_errors_are_short(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    assert torch_weights.main(["convert", "--model=resnet18", f"--torch_file={tmp_path / 'bad.npz'}",
                               f"--out={tmp_path / 'out.npz'}"]) == 1
    assert "error: from_torch('resnet18'): missing tensor 'fc.weight'" in capsys.readouterr().err
    assert torch_weights.main(["convert", "--model=resnet18", f"--torch_file={tmp_path / 'none.pth'}",
                               f"--out={tmp_path / 'out.npz'}"]) == 1
    assert "No such file" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()
