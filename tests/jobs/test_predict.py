"""Prediction from a trained run's best checkpoint (cnnlab/jobs/predict.py, experiments/predict.py): the run's own
preprocessing reproduces its evaluation exactly, the command's text and JSON output, and bad input."""

import io
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from _trained_run import trained_run
from PIL import Image

from cnnlab.data import decode
from cnnlab.jobs import predict
from cnnlab.train import CheckpointError
from cnnlab.train import checkpoint as checkpoint_lib
from cnnlab.train.state import TrainState
from experiments import predict as predict_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def trained(run):
    return predict.load_trained(run["workdir"])


def _cli(capsys, *args):
    capsys.readouterr()
    status = predict_cli.run(["predict", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_predicting_the_test_pngs_reproduces_the_runs_evaluation(run, trained):
    # The checkpoint is the run's best (its only one, evaluated on the whole test split at the end of training):
    # top-1 over the 359 PNG files must give exactly results.json's accuracy, so every image was preprocessed
    # as the evaluation preprocessed it.
    assert trained.step == 20 and trained.eval_accuracy == pytest.approx(run["results"]["test"]["accuracy"])
    assert (trained.model_name, trained.dataset, trained.num_classes) == ("lenet5", "digits", 10)
    assert trained.preprocessing.input_shape == (8, 8, 1) and trained.preprocessing.model_shape == (28, 28, 1)
    results = predict.predict(run["workdir"], run["pngs"], top=3, batch_size=359)  # the evaluation's batch
    top1 = np.array([r["predictions"][0]["index"] for r in results])
    assert np.mean(top1 == run["labels"]) == pytest.approx(run["results"]["test"]["accuracy"], abs=1e-9)
    # The PNG path and the in-memory array path agree; batches of 100 (the last one padded) give the same logits.
    logits = trained.logits(run["images"], batch_size=359)
    np.testing.assert_array_equal(top1, logits.argmax(-1))
    np.testing.assert_allclose(trained.logits(run["images"], batch_size=100), logits, rtol=1e-5, atol=1e-5)
    first = results[0]
    assert first["image"] == run["pngs"][0] and len(first["predictions"]) == 3
    probabilities = [p["probability"] for p in first["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert first["predictions"][0]["class"] == trained.class_names[first["predictions"][0]["index"]]


def test_rgb_palette_and_other_sizes_become_the_trained_grey_input(run, trained, tmp_path):
    image = run["images"][5]
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.repeat(image, 3, axis=2)).save(rgb)
    np.testing.assert_array_equal(trained.preprocessing.load(str(rgb)), image)  # equal channels: exact grey
    big = tmp_path / "big.jpg"
    Image.fromarray(np.repeat(image, 3, axis=2)).resize((120, 80), Image.Resampling.NEAREST).save(big, quality=95)
    loaded = trained.preprocessing.load(str(big))
    assert loaded.shape == (8, 8, 1) and loaded.dtype == np.uint8
    assert np.abs(loaded.astype(int) - image.astype(int)).mean() < 40  # resized back, roughly the same digit
    palette = tmp_path / "palette.gif"
    Image.fromarray(image[:, :, 0]).convert("P").save(palette)
    np.testing.assert_array_equal(trained.preprocessing.load(str(palette)), image)


def test_invert_and_the_light_background_warning(run, trained, tmp_path):
    inverted = tmp_path / "ink_on_paper.png"
    Image.fromarray(255 - run["images"][0][:, :, 0]).save(inverted)
    plain = predict.predict_images(trained, [run["pngs"][0]], top=10)[0]
    as_is = predict.predict_images(trained, [str(inverted)], top=10)[0]
    undone = predict.predict_images(trained, [str(inverted)], top=10, invert=True)[0]
    assert undone["predictions"] == plain["predictions"] and undone["warnings"] == [] == plain["warnings"]
    assert "--invert" in as_is["warnings"][0]


def test_the_command_prints_text_and_json(run, capsys):
    status, out, err = _cli(capsys, f"--workdir={run['workdir']}", "--top=20", run["pngs"][0], run["pngs"][1])
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("lenet5 on digits, checkpoint step 20, eval accuracy ")
    assert lines[1] == run["pngs"][0] and lines[2].startswith("  1. ") and lines[11].startswith("  10. ")
    assert lines[12] == run["pngs"][1]  # --top beyond the class count: all 10 classes
    status, out, err = _cli(capsys, f"--workdir={run['workdir']}", "--json", "--top=2", run["pngs"][0])
    assert status == 0, err
    record = json.loads(out)
    assert record["checkpoint_step"] == 20 and record["model"] == "lenet5" and record["dataset"] == "digits"
    assert "zero-padded to 28x28" in record["preprocessing"]
    [image] = record["images"]
    assert image["image"] == run["pngs"][0] and image["warnings"] == []
    assert set(image["predictions"][0]) == {"class", "index", "probability"} and len(image["predictions"]) == 2


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.png", "missing.png: no such file"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "notes.txt").write_text("not an image") and d / "notes.txt", "notes.txt is not an image"),
    (lambda d: (d / "cut.png").write_bytes(_png_bytes()[:50]) and d / "cut.png", "cut.png is not an image"),
])
def test_a_bad_image_file_is_named_and_exits_2_with_nothing_printed(run, capsys, tmp_path, make, message):
    bad = str(make(tmp_path))
    status, out, err = _cli(capsys, f"--workdir={run['workdir']}", run["pngs"][0], bad)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    with pytest.raises((OSError, ValueError), match=re.escape(bad)):
        predict.predict(run["workdir"], [bad])


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_workdirs_that_cannot_predict_say_train_first_and_are_not_changed(run, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    status, out, err = _cli(capsys, f"--workdir={empty}", run["pngs"][0])
    assert status == 2 and out == "" and "has no config.json" in err and "train first" in err
    (empty / "config.json").write_text(json.dumps({"kind": "train", "dataset": "digits"}))
    status, _, err = _cli(capsys, f"--workdir={empty}", run["pngs"][0])
    assert status == 2 and "has no checkpoints" in err and "train first" in err
    assert sorted(os.listdir(empty)) == ["config.json"]  # no checkpoints/ created, no lock, nothing
    (empty / "config.json").write_text(json.dumps({"kind": "knn", "dataset": "digits"}))
    with pytest.raises(ValueError, match="holds a 'knn' job"):
        predict.load_trained(str(empty))
    with pytest.raises(FileNotFoundError, match="does not exist; train first"):
        predict.load_trained(str(tmp_path / "nowhere"))
    status, _, err = _cli(capsys, f"--workdir={run['workdir']}")
    assert status == 2 and "name one or more image files" in err
    status, _, err = _cli(capsys, run["pngs"][0])
    assert status == 2 and "--workdir must be given" in err
    before = sorted(os.listdir(run["workdir"]))
    _cli(capsys, f"--workdir={run['workdir']}", "--top=0", run["pngs"][0])
    assert sorted(os.listdir(run["workdir"])) == before


def test_encoded_image_runs_use_the_evaluation_centre_crop(tmp_path):
    # imagenet2012 / image-folder runs: the file's bytes go through decode_center_crop at the trained size.
    preprocessing = predict.Preprocessing("image_folder", (24, 24, 3), (24, 24, 3), (0.5,) * 3, (0.25,) * 3,
                                          encoded=True)
    path = tmp_path / "wide.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(path, quality=90)
    np.testing.assert_array_equal(preprocessing.load(str(path)),
                                  decode.decode_center_crop(path.read_bytes(), 24))
    assert "shorter side resized to 27" in preprocessing.describe()


def test_help_goes_through_absl():
    done = subprocess.run([sys.executable, "-m", "experiments.predict", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--invert" in done.stdout and "python -m experiments.predict" in done.stdout


def test_runs_over_seeds_need_a_seed(run, trained, tmp_path):
    # Separate workdirs per seed (config.seeds = N): DIR --seed=S is DIR/seed_<n>.
    seeds_run = tmp_path / "seeds"
    shutil.copytree(run["workdir"], seeds_run / "seed_0")
    (seeds_run / "config.json").write_text(json.dumps({"kind": "train", "seed": 0, "seeds": 2}))
    with pytest.raises(ValueError, match=r"is a run over seeds \[0\], each with its own checkpoints: choose one"):
        predict.load_trained(str(seeds_run))
    with pytest.raises(ValueError, match="--seed=3 is not one of them"):
        predict.load_trained(str(seeds_run), seed=3)
    chosen = predict.load_trained(str(seeds_run), seed=0)
    assert chosen.workdir == str(seeds_run / "seed_0") and chosen.seed == 0 and chosen.step == trained.step
    with pytest.raises(ValueError, match="is a run of seed 0 only; --seed=1"):
        predict.load_trained(run["workdir"], seed=1)

    # Seeds trained stacked (config.seeds_stacked): one checkpoint, every leaf [seeds, ...]; --seed takes a slice.
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    config = json.loads(open(os.path.join(run["workdir"], "config.json")).read())
    (stacked / "config.json").write_text(json.dumps(dict(config, seeds=2, seeds_stacked=True)))
    with checkpoint_lib.Checkpoints(os.path.join(run["workdir"], "checkpoints"), async_save=False) as original:
        meta = original.read_meta(20)
    doubled = jax.tree.map(lambda a: 2 * a, trained.variables["params"])
    state = TrainState(params=jax.tree.map(lambda a, b: np.stack([a, b]), trained.variables["params"], doubled),
                       batch_stats={}, opt_state={}, step=np.array([20, 20], np.int32),
                       rng=jax.random.split(jax.random.key(0), 2))
    with checkpoint_lib.Checkpoints(str(stacked / "checkpoints"), async_save=False) as checkpoints:
        checkpoints.save(20, state, dict(meta, stacked=True, seeds=[4, 9]), metrics={"eval_accuracy": 0.5})
    with pytest.raises(ValueError, match=r"holds seeds \[4, 9\] trained together .* choose one with --seed=S"):
        predict.load_trained(str(stacked))
    second = predict.load_trained(str(stacked), seed=9)
    assert second.seed == 9
    jax.tree.map(np.testing.assert_array_equal, second.variables["params"], doubled)
    jax.tree.map(np.testing.assert_array_equal, predict.load_trained(str(stacked), seed=4).variables,
                 trained.variables)
    (stacked / "seed_1").mkdir()
    (stacked / "seed_1" / "config.json").write_text(json.dumps(dict(config, seed=9)))
    with pytest.raises(FileNotFoundError, match=f"use --workdir={re.escape(str(stacked))} --seed=9"):
        predict.load_trained(str(stacked / "seed_1"))


# A restore that fails on corrupt data leaves a tensorstore callback for Orbax's closed event loop (Orbax's noise).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_is_named_and_left_as_it_was(run, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(run["workdir"], workdir)
    state = os.path.join(workdir, "checkpoints", "20", "state")
    data_files = [os.path.join(d, f) for d, _, files in os.walk(state) for f in files
                  if "_METADATA" not in f and os.path.getsize(os.path.join(d, f)) > 64]
    assert data_files
    for path in data_files:
        with open(path, "r+b") as handle:
            handle.write(b"\xde\xad\xbe\xef" * (os.path.getsize(path) // 4))
    listing = sorted(os.path.relpath(os.path.join(d, f), workdir) for d, _, files in os.walk(workdir) for f in files)
    with pytest.raises(CheckpointError, match=f"Checkpoint {re.escape(os.path.dirname(state))} cannot be read"):
        predict.load_trained(workdir)
    assert sorted(os.path.relpath(os.path.join(d, f), workdir) for d, _, files in os.walk(workdir)
                  for f in files) == listing
