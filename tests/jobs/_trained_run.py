"""One tiny training run shared by the predict and export tests (trained once per test session)."""

import os

import numpy as np
from PIL import Image

_RUN: dict = {}


def trained_run(tmp_path_factory) -> dict:
    """{"workdir", "results", "images": uint8 [359, 8, 8, 1], "labels", "pngs": [path per test image]}.

    LeNet-5 on sklearn's digits zero-padded to 28x28, 20 steps of batch 32 on one device: the run ends with an
    evaluation of the whole test split and its only checkpoint, so that checkpoint is the best one and its
    accuracy is results.json's. Each test image is also written as an 8x8 grey PNG.
    """
    if not _RUN:
        from cnnlab import data, jobs
        from experiments.configs import common

        config = common.base_config()
        config.update(dict(dataset="digits", image_size=28, model="lenet5", num_train_steps=20, batch_size=32,
                           eval_batch_size=359, learning_rate=0.05, log_every_steps=20, checkpoint_every_steps=0,
                           report=False, num_devices=1))
        base = tmp_path_factory.mktemp("trained")
        workdir = str(base / "run")
        results = jobs.run(config, workdir)
        test = data.load("digits", "test")
        pngs = []
        for index, image in enumerate(test.images):
            path = str(base / f"digit{index:03d}.png")
            Image.fromarray(image[:, :, 0]).save(path)
            pngs.append(path)
        _RUN.update(workdir=workdir, results=results, images=test.images, labels=test.labels, pngs=pngs)
    assert os.path.isdir(_RUN["workdir"]) and np.asarray(_RUN["images"]).shape == (359, 8, 8, 1)
    return _RUN
