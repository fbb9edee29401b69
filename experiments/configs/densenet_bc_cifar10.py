"""DenseNet-BC (L=100, k=12) on CIFAR-10 with Huang et al. 2017's recipe (Sec. 4.2).

    python -m experiments.main --config=experiments/configs/densenet_bc_cifar10.py --workdir=/tmp/cnnlab/densenet_bc_cifar10

Recipe: SGD with Nesterov momentum 0.9 (no dampening), weight decay 1e-4, batch 64, 300 epochs, lr 0.1 divided by
10 at 50% and 75% of training, crop + flip augmentation ("C10+"), no dropout with augmentation. Expected: about
95.5% test accuracy (the paper's 4.51% error, Table 2). Not measured here (no CIFAR on the development machine;
a GPU run). ``:runlocal`` trains 20 steps.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.dataset = "cifar10"
    c.model = "densenet_bc_100_12"
    c.num_epochs = 300
    c.batch_size = 64
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.nesterov = True
    c.weight_decay = 1e-4
    c.schedule = "step"
    c.lr_boundaries_epochs = (150, 225)
    c.augment = True
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    if "runlocal" in common.parse_arg(arg):
        common.apply_runlocal(c, num_train_steps=20, batch_size=32)
    return c
