"""ResNet-18 (small-input stem) on Fashion-MNIST.

    python -m experiments.main --config=experiments/configs/resnet18_fashion_mnist.py --workdir=/tmp/cnnlab/resnet18_fmnist

He et al.'s optimiser (SGD momentum 0.9, lr 0.1, batch 128) with weight decay 5e-4, a one-cycle schedule over 30
epochs, flips and 2-pixel crops. Expected: about 95% test accuracy (ResNet-18 results on Fashion-MNIST are
typically 94.5-95.5%). Not measured on the development machine (about 1.8 GFLOP per image: hours on 2 CPU cores);
a GPU run. ``:runlocal`` trains 20 steps; ``:bf16`` computes in bfloat16.
"""

from experiments.configs import common


def get_config(arg=None):
    args = common.parse_arg(arg, flags=("runlocal", "bf16"), config="resnet18_fashion_mnist.py")
    c = common.base_config()
    c.dataset = "fashion_mnist"
    c.model = "resnet18"
    c.model_overrides.small_input = True
    c.num_epochs = 30
    c.batch_size = 128
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 5e-4
    c.schedule = "onecycle"
    c.augment = True
    c.augment_pad = 2
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    if "bf16" in args:
        c.dtype = "bfloat16"
    if "runlocal" in args:
        common.apply_runlocal(c, num_train_steps=20, batch_size=32)
    return c
