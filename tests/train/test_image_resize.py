"""config.image_resize: the device resizes (bilinear) after padding, augmentation and normalisation; the model,
the checkpoint and predict see the resized shape."""

import jax
import jax.numpy as jnp
import numpy as np
from _train_helpers import tiny_config

from cnnlab.jobs import train_and_evaluate
from cnnlab.train import loop, steps


def test_preprocess_resizes_after_normalising_and_commutes_with_it():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8))
    out = steps.preprocess(images, None, mean=(0.5,), std=(0.25,), augment=False, image_size=(10, 10),
                           resize=(20, 20))
    assert out.shape == (2, 20, 20, 1)
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0))).astype(jnp.float32)
    resized_first = jax.image.resize(padded, (2, 20, 20, 1), method="bilinear")
    np.testing.assert_allclose(out, (resized_first / 255 - 0.5) / 0.25, atol=1e-5)
    same = steps.preprocess(images, None, mean=(0.5,), std=(0.25,), augment=False, resize=(8, 8))
    np.testing.assert_array_equal(same, steps.preprocess(images, None, mean=(0.5,), std=(0.25,), augment=False))


def test_a_run_with_image_resize_trains_checkpoints_and_predicts(tmp_path):
    from PIL import Image

    from cnnlab.jobs import predict

    config = tiny_config(image_size=12, image_resize=28, num_train_steps=3, checkpoint_every_steps=3)
    run = loop.setup(config)
    assert run.pad_shape == (12, 12, 1) and run.image_shape == (28, 28, 1)
    results = train_and_evaluate(config, str(tmp_path / "run"))
    assert results["test"]["count"] == 359
    path = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    trained = predict.load_trained(str(tmp_path / "run"))
    assert trained.preprocessing.padded_shape == (12, 12, 1) and trained.preprocessing.model_shape == (28, 28, 1)
    assert "resized to 28x28" in trained.preprocessing.describe()
    [answer] = predict.predict(str(tmp_path / "run"), [str(path)], top=2)
    assert len(answer["predictions"]) == 2
