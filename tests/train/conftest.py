"""Fixtures for the training tests: a tiny, fast LeNet-5-on-digits config (8x8 digits zero-padded to 28x28)."""

import pytest

from experiments.configs import common


def tiny_config(**overrides):
    """LeNet-5 on sklearn digits (1,438 train / 359 test), batch 32: one epoch is 44 steps."""
    c = common.base_config()
    c.dataset = "digits"
    c.image_size = 28
    c.model = "lenet5"
    c.num_epochs = 1
    c.batch_size = 32
    c.eval_batch_size = 120
    c.optimizer = "sgd"
    c.learning_rate = 0.05
    c.weight_decay = 1e-4
    c.schedule = "constant"
    c.steps_per_dispatch = 4
    c.log_every_steps = 10
    c.checkpoint_every_steps = 0
    c.report = False
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.fixture
def make_config():
    return tiny_config

