"""Bad configs, a non-finite loss, corrupt and incompatible checkpoints: each a clear error, nothing overwritten."""

import glob
import hashlib
import os
import re
import shutil

import jax
import numpy as np
import pytest

from cnnlab.jobs import train_and_evaluate
from cnnlab.train import CheckpointError, ResumeMismatch, validate_config
from cnnlab.train import checkpoint as checkpoint_lib


@pytest.mark.parametrize("field, value, match", [
    # Names are checked by the registry or factory that uses them, when the run is set up.
    ("model", "lenet7", "Unknown model 'lenet7'. Known models: .*lenet5"),
    ("dataset", "imagenett", "unknown dataset 'imagenett'; valid names: .*digits"),
    ("optimizer", "rmsprop", "Unknown optimizer 'rmsprop'; known optimizers: .*adamw"),
    ("schedule", "linear", "Unknown schedule 'linear'; known schedules: .*onecycle"),
    ("dtype", "float16", "Unknown dtype 'float16'"),
    ("batch_size", 0, "config.batch_size must be a positive integer"),
    ("learning_rate", -0.1, r"config.learning_rate must be a number in \(0, inf\), got -0.1"),
    ("weight_decay", -1.0, r"config.weight_decay must be a number in \[0, inf\)"),
    ("label_smoothing", 1.0, r"config.label_smoothing must be a number in \[0, 1\)"),
    ("grad_clip_norm", -1.0, r"config.grad_clip_norm must be a number in \[0, inf\)"),
    # Issue #12.6: these were accepted and trained (a negative warmup, a diverging momentum).
    ("warmup_epochs", -1.0, r"config.warmup_epochs must be a number in \[0, inf\), got -1.0"),
    ("momentum", -0.5, r"config.momentum must be a number in \[0, 1\), got -0.5"),
    ("momentum", 1.0, r"config.momentum must be a number in \[0, 1\), got 1.0"),
    ("num_epochs", -1, "config.num_epochs must be a non-negative integer"),
    ("num_devices", 9, "num_devices=9 but only 8 devices exist"),
    ("image_size", 4, "image_size=4 is smaller than the 8x8 images"),
    ("batch_size", 4096, "batch_size=4096 is larger than the 1438 training examples"),
])
def test_bad_config_values_are_clear_errors(tmp_path, make_config, field, value, match):
    config = make_config(**{field: value})
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
    assert not os.path.exists(tmp_path / "run" / "config.json")


@pytest.mark.parametrize("field, value, match", [
    ("batch_size", 12, r"batch_size=12 must be a positive multiple of the number of devices \(8\)"),
    ("eval_batch_size", 100, "eval_batch_size=100 must be a positive multiple"),
])
def test_batches_must_split_over_the_devices(tmp_path, make_config, field, value, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(make_config(num_devices=8, **{field: value}), str(tmp_path / "run"))


def test_missing_fields_and_no_length(tmp_path, make_config):
    config = make_config(num_epochs=0, num_train_steps=0)
    with pytest.raises(ValueError, match="num_epochs > 0 or config.num_train_steps > 0"):
        validate_config(config)
    del config["optimizer"]
    with pytest.raises(ValueError, match="lacks the field"):
        validate_config(config)
    with pytest.raises(ValueError, match="needs config.lr_boundaries"):
        train_and_evaluate(make_config(schedule="step"), str(tmp_path / "run"))


def test_nonfinite_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path, make_config):
    workdir = str(tmp_path / "run")
    config = make_config(num_epochs=1, learning_rate=1e5, momentum=0.0, checkpoint_every_steps=1,
                         log_every_steps=1, steps_per_dispatch=1)
    with pytest.raises(FloatingPointError, match=r"NaN or infinite at step (\d+) \(epoch 1\).*last good checkpoint, "
                                                 r"step (\d+)") as info:
        train_and_evaluate(config, workdir)
    bad_step, good_step = map(int, re.search(r"at step (\d+).*step (\d+)", str(info.value)).groups())
    assert good_step == bad_step - 1 >= 1
    ckpt = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"))
    assert ckpt.latest_step() == good_step
    restored = ckpt.manager.restore(good_step)["state"]
    ckpt.close()
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(restored["params"]))
    assert not os.path.exists(os.path.join(workdir, "results.json"))


def _digest(directory):
    files = sorted(glob.glob(os.path.join(directory, "**"), recursive=True))
    return {f: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files if os.path.isfile(f)}


# A restore that fails on corrupt data leaves a tensorstore callback for Orbax's closed event loop, which Python
# reports as "Exception ignored ... Event loop is closed" after the test: Orbax's noise, not cnnlab's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_and_incompatible_checkpoints_are_clear_errors(tmp_path, make_config, capsys):
    workdir = str(tmp_path / "run")
    # A checkpoint at every step, two kept: step 1 stays as an intact earlier checkpoint of step 2.
    config = make_config(num_train_steps=2, checkpoint_every_steps=1, keep_checkpoints=2, steps_per_dispatch=1,
                         log_every_steps=1)
    train_and_evaluate(config, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    assert sorted(os.listdir(checkpoints)) == ["1", "2"]
    os.remove(os.path.join(workdir, "results.json"))  # else the rerun stops at "already finished"
    before = _digest(workdir)

    # Another input size (32x32) in the same workdir: the config fingerprint refuses it before anything is written.
    with pytest.raises(ResumeMismatch, match="image_size: 28 in the checkpoint, 32 now"):
        train_and_evaluate(make_config(**{**config, "image_size": 32}), workdir)
    with pytest.raises(ResumeMismatch, match="model_overrides.style: '\\(not set\\)' in the checkpoint, 'original'"):
        train_and_evaluate(make_config(**{**config, "model_overrides": {"style": "original"}}), workdir)
    assert _digest(workdir) == before

    # Corrupt array data in step 2: every data file of its state item overwritten with garbage.
    data_files = [f for f in before if f"{os.sep}2{os.sep}state{os.sep}" in f and "_METADATA" not in f
                  and os.path.getsize(f) > 64]
    assert data_files
    for f in data_files:
        with open(f, "r+b") as handle:
            handle.write(b"\xde\xad\xbe\xef" * (os.path.getsize(f) // 4))
    corrupted = _digest(workdir)
    damaged = os.path.join(checkpoints, "2")
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(config, workdir)
    message = str(info.value)
    assert f"Checkpoint step 2 in {checkpoints} is damaged" in message and "DATA_LOSS" in message
    assert f"The newest intact checkpoint is step 1: to resume from it, run `mv {damaged} {damaged}.damaged`" \
        in message
    assert _digest(workdir) == corrupted  # neither deleted nor overwritten

    # The way out the message gives works: the run resumes from step 1 and finishes.
    shutil.move(damaged, damaged + ".damaged")
    capsys.readouterr()
    results = train_and_evaluate(config, workdir)
    assert "Resuming from checkpoint step 1 of 2" in capsys.readouterr().out
    assert results["details"]["steps"] == 2 and os.path.isdir(damaged)


def test_shape_mismatch_is_detected_from_array_metadata(tmp_path):
    import flax.linen as nn
    import optax

    from cnnlab import parallel
    from cnnlab.train import state as state_lib

    class Tiny(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(nn.Conv(self.features, (3, 3))(x).mean((1, 2)))

    mesh = parallel.make_data_mesh(jax.devices()[:1])
    tx = optax.sgd(0.1)
    state4, sh4 = state_lib.create_train_state(Tiny(4), tx, seed=0, input_shape=(8, 8, 1), mesh=mesh)
    state5, sh5 = state_lib.create_train_state(Tiny(5), tx, seed=0, input_shape=(8, 8, 1), mesh=mesh)
    ckpt = checkpoint_lib.Checkpoints(str(tmp_path / "checkpoints"), async_save=False)
    ckpt.save(3, state4, {"model": "tiny"})
    with pytest.raises(CheckpointError, match=r"does not match this run's model \(shape/dtype differences "
                                              r"\['opt_state'\]|\['params'\]\['Conv_0'\]\['bias'\]: checkpoint \(\(4,\)"):
        ckpt.restore(3, state5, sh5, {"model": "tiny"})
    restored = ckpt.restore(3, state4, sh4, {"model": "tiny"})
    np.testing.assert_array_equal(restored.params["Conv_0"]["kernel"], state4.params["Conv_0"]["kernel"])
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state4.rng))
    ckpt.close()
