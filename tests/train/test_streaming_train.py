"""Training on encoded-image datasets through the streamed feed (issue #13): the job streams an image folder with
the in-memory path's contract (reports, checkpoints, eval masks), the data position goes into every checkpoint,
a run resumed mid-epoch ends bit-identical to the uninterrupted one, and config.streaming is checked."""

import json
import os
import shutil

import numpy as np
import pytest
from _train_helpers import committed_steps, tiny_config

from cnnlab.data import demo, loading
from cnnlab.jobs import train_and_evaluate
from cnnlab.train import checkpoint as checkpoint_lib
from cnnlab.train import feeds, loop

NAME = "tinyphotos"


@pytest.fixture(scope="module")
def image_data_dir(tmp_path_factory):
    """A data_dir holding image folder ``tinyphotos``: 10 digit classes x 8 images of 48-160 px (JPEG, grey
    JPEG, PNG), 60 train / 20 test (2 per class)."""
    root = tmp_path_factory.mktemp("photos")
    demo.write_demo_folder(root / "folder", per_class=8)
    data_dir = root / "tfds"
    loading.prepare_image_folder(NAME, root / "folder", data_dir=data_dir)
    return str(data_dir)


def streamed_config(data_dir, **overrides):
    """LeNet-5 on 32 x 32 crops of the image folder, 2 devices, batch 16: 3 steps per epoch."""
    fields = dict(dataset=NAME, data_dir=data_dir, image_size=32, batch_size=16, eval_batch_size=6, num_epochs=2,
                  num_devices=2, augment=True, data_threads=2, log_every_steps=2, checkpoint_every_steps=1,
                  keep_checkpoints=10)
    fields.update(overrides)
    return tiny_config(**fields)


@pytest.fixture(scope="module")
def streamed_run(image_data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("streamed") / "run")
    return workdir, train_and_evaluate(streamed_config(image_data_dir), workdir)


def test_image_folder_trains_streamed_with_the_full_job_contract(streamed_run):
    workdir, results = streamed_run
    assert results["details"]["input"] == "streamed"
    assert results["splits"]["train"] == 60
    # 20 test images in eval batches of 6: the last batch is padded and masked, every image counted once.
    assert results["test"]["count"] == 20
    assert sum(np.asarray(results["details"]["eval_confusion"]).ravel()) == 20
    assert results["model"]["params_sha256"]
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if "eval_accuracy" in r] == [3, 6]
    for name in ("config.json", "results.json"):
        assert os.path.isfile(os.path.join(workdir, name))
    ckpt = checkpoint_lib.Checkpoints(os.path.join(workdir, "checkpoints"))
    try:
        assert ckpt.read_meta(5)["position"] == {"epoch": 1, "batch": 2}  # step 5 = batch 2 of epoch 1
        assert ckpt.read_meta(6)["position"] == {"epoch": 2, "batch": 0}
    finally:
        ckpt.close()


def test_resumed_mid_epoch_ends_bit_identical(streamed_run, tmp_path, image_data_dir):
    reference_dir, reference = streamed_run
    workdir = str(tmp_path / "resumed")
    shutil.copytree(reference_dir, workdir)
    for step in committed_steps(workdir):  # as if killed right after step 4's checkpoint (mid epoch 2)
        if step > 4:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    os.remove(os.path.join(workdir, "results.json"))
    results = train_and_evaluate(streamed_config(image_data_dir), workdir)
    assert results["model"]["params_sha256"] == reference["model"]["params_sha256"]
    assert results["test"] == reference["test"]


def test_feed_batches_are_pure_functions_of_seed_epoch_and_position(image_data_dir):
    config = streamed_config(image_data_dir, num_devices=1)
    info = loading.info(NAME, data_dir=image_data_dir)
    feed = feeds.make_feed(config, info=info, data_dir=image_data_dir)
    assert feed.streaming and feed.steps_per_epoch == 3 and feed.image_shape == (32, 32, 3)
    whole = list(feed.train_batches(1))
    tail = list(feed.train_batches(1, start_batch=2))
    assert len(whole) == 3 and len(tail) == 1
    for a, b in zip(whole[2:], tail):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other_epoch = list(feed.train_batches(0))
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(whole, other_epoch))
    masks = np.concatenate([b["mask"] for b in feed.eval_batches()])
    assert masks.sum() == 20 and len(masks) == 24


def test_streaming_false_decodes_a_small_folder_into_memory(image_data_dir, tmp_path):
    config = streamed_config(image_data_dir, streaming=False, num_epochs=1, checkpoint_every_steps=0)
    run = loop.setup(config)
    assert not run.feed.streaming and run.feed.device_augment
    assert run.feed.train.images.shape == (60, 32, 32, 3)
    results = train_and_evaluate(config, str(tmp_path / "in_memory"))
    assert results["details"]["input"] == "in memory" and results["test"]["count"] == 20


def test_streaming_config_is_checked(image_data_dir):
    with pytest.raises(ValueError, match="needs an encoded-image dataset"):
        loop.setup(tiny_config(streaming=True))
    with pytest.raises(ValueError, match="data_threads"):
        loop.setup(streamed_config(image_data_dir, data_threads=0))
    with pytest.raises(ValueError, match="no split 'validation'"):
        loop.setup(streamed_config(image_data_dir, eval_split="validation"))


def test_a_checkpoint_whose_position_disagrees_is_refused(streamed_run, tmp_path):
    smaller = tmp_path / "smaller"  # the same dataset name, prepared from 4 images per class: 30 train images
    demo.write_demo_folder(smaller / "folder", per_class=4)
    loading.prepare_image_folder(NAME, smaller / "folder", data_dir=smaller / "tfds")
    workdir = str(tmp_path / "moved")
    shutil.copytree(streamed_run[0], workdir)
    os.remove(os.path.join(workdir, "results.json"))
    for step in committed_steps(workdir):
        if step > 4:
            shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
    # data_dir may change on resume, but there an epoch is 1 step: step 4 is batch 0 of epoch 4, not 1 of epoch 1.
    with pytest.raises(checkpoint_lib.CheckpointError, match="data position"):
        train_and_evaluate(streamed_config(str(smaller / "tfds")), workdir)


@pytest.mark.slow
def test_imagenet_recipe_runlocal_prepares_demo_photos_and_trains(tmp_path, monkeypatch):
    from experiments.configs import resnet18_imagenet

    monkeypatch.setenv("CNNLAB_RAW_DIR", str(tmp_path / "raw"))
    config = resnet18_imagenet.get_config("runlocal")
    config.data_dir = str(tmp_path / "tfds")
    config.num_train_steps = 2
    config.checkpoint_every_steps = 1
    config.report = False
    results = train_and_evaluate(config, str(tmp_path / "run"))
    assert results["dataset"] == "demo_photos" and results["details"]["input"] == "streamed"
    assert results["splits"]["train"] == 1438 and results["test"]["count"] == 359
    assert len(list((tmp_path / "raw" / "demo_photos").glob("*/*"))) == 1797


def test_predict_on_a_streamed_run_needs_only_its_checkpoint(streamed_run, image_data_dir, tmp_path):
    from cnnlab.jobs import predict

    workdir = str(tmp_path / "moved")
    shutil.copytree(streamed_run[0], workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    config["data_dir"] = str(tmp_path / "no_data_here")  # the prepared folder is gone: the checkpoint suffices
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config, f)
    source = loading.data_source(NAME, "test", data_dir=image_data_dir)
    image_path = tmp_path / "digit.jpg"
    image_path.write_bytes(source[0]["image"])
    [answer] = predict.predict(workdir, [str(image_path)], top=3)
    assert len(answer["predictions"]) == 3
    assert {p["class"] for p in answer["predictions"]} <= {str(d) for d in range(10)}
    # The same preprocessing as the run's evaluation: the streamed feed's centre crop of the same bytes.
    trained = predict.load_trained(workdir)
    assert trained.preprocessing.encoded and trained.preprocessing.model_shape == (32, 32, 3)
