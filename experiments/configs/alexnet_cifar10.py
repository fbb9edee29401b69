"""AlexNet (CIFAR-sized variant) on CIFAR-10 with Krizhevsky et al. 2012's optimiser settings.

    python -m experiments.main --config=experiments/configs/alexnet_cifar10.py --workdir=/tmp/cnnlab/alexnet_cifar10

Recipe (paper Sec. 5): SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.01 divided by 10 (the paper did it
by hand when validation error stopped improving, three times; here at epochs 50, 75 and 90 of 100), dropout 0.5
in the dense layers, crop + flip augmentation. Expected: about 85% test accuracy (typical for AlexNet-style
networks on CIFAR-10; the paper reports ImageNet only). Not measured here (no CIFAR on the development machine).
``:runlocal`` trains 30 steps.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.dataset = "cifar10"
    c.model = "alexnet_cifar"
    c.num_epochs = 100
    c.batch_size = 128
    c.optimizer = "sgd"
    c.learning_rate = 0.01
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.schedule = "step"
    c.lr_boundaries_epochs = (50, 75, 90)
    c.augment = True
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    if "runlocal" in common.parse_arg(arg):
        common.apply_runlocal(c, num_train_steps=30, batch_size=32)
    return c
