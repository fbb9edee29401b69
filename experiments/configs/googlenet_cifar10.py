"""GoogLeNet (Inception v1) on CIFAR-10, with auxiliary classifiers (weight 0.3, as in Szegedy et al. 2015).

    python -m experiments.main --config=experiments/configs/googlenet_cifar10.py --workdir=/tmp/cnnlab/googlenet_cifar10

The paper's recipe is for ImageNet (asynchronous SGD, momentum 0.9, lr -4% every 8 epochs); for 32x32 CIFAR-10
this uses the small-input stem (3x3 convolution, no first max-pools) and a standard CIFAR schedule: SGD momentum
0.9, weight decay 5e-4, batch 128, lr 0.1 with cosine decay over 200 epochs, crop + flip. Expected: about 94-95%
test accuracy (what CIFAR ports of GoogLeNet report with this schedule); not measured here (no CIFAR on the
development machine; a GPU run). ``:runlocal`` trains 10 steps.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.dataset = "cifar10"
    c.model = "googlenet"
    c.model_overrides.small_input = True
    c.model_overrides.aux_logits = True
    c.num_epochs = 200
    c.batch_size = 128
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.augment = True
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    if "runlocal" in common.parse_arg(arg):
        common.apply_runlocal(c, num_train_steps=10, batch_size=32)
    return c
