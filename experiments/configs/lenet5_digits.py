"""LeNet-5 on scikit-learn's 8x8 digits (zero-padded to 28x28): a smoke test of the whole training path.

    python -m experiments.main --config=experiments/configs/lenet5_digits.py --workdir=/tmp/cnnlab/lenet5_digits

Needs no prepared data (the digits ship with scikit-learn). 1,438 training / 359 test images, 10 epochs of
batch 64 (220 steps): about 10 s on 2 CPU cores; expect >= 95% test accuracy (measured 97.49%, 3 s training,
9 s wall).
``:runlocal`` trains 30 steps.
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.dataset = "digits"
    c.image_size = 28          # LeNet-5 takes 28x28 (or 32x32) inputs
    c.model = "lenet5"
    c.num_epochs = 10
    c.batch_size = 64
    c.eval_batch_size = 360
    c.optimizer = "sgd"
    c.learning_rate = 0.05
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.steps_per_dispatch = 1
    c.log_every_steps = 22
    c.checkpoint_every_steps = 50
    if "runlocal" in common.parse_arg(arg):
        common.apply_runlocal(c, num_train_steps=30)
    return c
