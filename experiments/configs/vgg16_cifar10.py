"""VGG-16 with batch norm on CIFAR-10, with the CIFAR recipe of Liu et al. 2017 / 2019 (network slimming, "Rethinking
the value of network pruning"): SGD momentum 0.9, weight decay 1e-4, batch 64, lr 0.1 divided by 10 at 50% and 75%
of 160 epochs, crop + flip augmentation. (Simonyan & Zisserman's own recipe is for ImageNet.)

    python -m experiments.main --config=experiments/configs/vgg16_cifar10.py --workdir=/tmp/cnnlab/vgg16_cifar10

Expected: about 93.5% test accuracy (those papers report 93.5-93.8% for VGG-16 on CIFAR-10). The classifier is
VGG's 512-512 head on the 1x1 map (``pooled_size=1, hidden_units=512``) as in those CIFAR versions. Not measured
here (no CIFAR on the development machine; a GPU run). ``:runlocal`` trains 30 steps.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.dataset = "cifar10"
    c.model = "vgg16_bn"
    c.model_overrides.pooled_size = 1
    c.model_overrides.hidden_units = 512
    c.num_epochs = 160
    c.batch_size = 64
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.schedule = "step"
    c.lr_boundaries_epochs = (80, 120)
    c.augment = True
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    if "runlocal" in common.parse_arg(arg):
        common.apply_runlocal(c, num_train_steps=30, batch_size=32)
    return c
