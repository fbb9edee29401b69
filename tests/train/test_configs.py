"""Every training config file in experiments/configs loads, passes validation, and documents its own command."""

import glob
import importlib
import os

import pytest

from cnnlab.train import validate_config

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs")
TRAIN_CONFIGS = sorted(
    os.path.splitext(os.path.basename(p))[0]
    for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
    if os.path.basename(p) not in ("__init__.py", "common.py", "knn.py", "classical.py", "compare.py")
)


def test_the_expected_configs_exist():
    for name in ("lenet5_mnist", "lenet5_fashion_mnist", "resnet20_cifar10", "resnet56_cifar10",
                 "resnet56_cifar100", "vgg16_cifar10", "densenet_bc_cifar10", "googlenet_cifar10",
                 "alexnet_cifar10", "resnet18_fashion_mnist", "resnet50_imagenet", "resnet18_imagenet"):
        assert name in TRAIN_CONFIGS


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_config_loads_and_validates(name, arg):
    module = importlib.import_module(f"experiments.configs.{name}")
    config = module.get_config(arg)
    assert config.kind == "train"
    validate_config(config)
    if arg == "runlocal":
        full = module.get_config(None)
        shorter = (config.num_train_steps or float("inf")) < (full.num_train_steps or float("inf"))
        assert shorter or config.num_epochs < full.num_epochs, f"{name}:runlocal does not shrink the run"
    # The docstring opens the file with the command that runs it.
    assert f"--config=experiments/configs/{name}.py" in module.__doc__
