"""Raw readers on tiny files written in each official format, and every corrupt variant."""

import builtins
import gzip
import os
import pickle

import numpy as np
import pytest

from _data_rawfiles import (CIFAR10_NAMES, cifar10_binary_members, cifar10_python_members,
                            cifar100_python_members, idx_bytes, random_images, write_bytes, write_folder,
                            write_idx_dataset, write_mnist_pkl_gz, write_raw_pkl_gz, write_tar_gz)
from cnnlab.data import formats
from cnnlab.data.formats import RawFormatError, UnsafePickleError

FINE = [f"fine{i}" for i in range(100)]
COARSE = [f"coarse{i}" for i in range(20)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_split_roundtrip(tmp_path, rng, gz):
    images = random_images(rng, 7, (28, 28))
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    paths = write_idx_dataset(tmp_path, {"train": (images, labels)}, gz=gz)
    split = formats.read_idx_split(*paths["train"], num_classes=10)
    assert split.images.dtype == np.uint8 and split.images.shape == (7, 28, 28, 1)
    np.testing.assert_array_equal(split.images[..., 0], images)
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.labels, labels)


def test_idx_other_types_and_shapes(tmp_path):
    values = (np.arange(12).reshape(3, 4) - 5).astype(">i4")  # big-endian, as IDX stores it
    path = write_bytes(tmp_path / "ints", idx_bytes(values, type_code=0x0C), gz=False)
    out = formats.read_idx(path)
    np.testing.assert_array_equal(out, values)
    assert out.dtype == np.int32 and out.dtype.isnative


def test_idx_gzip_detected_by_content(tmp_path, rng):
    images = random_images(rng, 2, (5, 5))
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(formats.read_idx(path), images)


def _idx_error(tmp_path, payload, *, reader=formats.read_idx, gz=False, name="bad-idx"):
    path = write_bytes(tmp_path / name, payload, gz=gz)
    with pytest.raises(RawFormatError) as info:
        reader(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_idx_wrong_magic(tmp_path, rng):
    payload = bytearray(idx_bytes(random_images(rng, 2, (28, 28))))
    payload[0] = 0x12
    assert "wrong magic number" in _idx_error(tmp_path, bytes(payload))
    payload = bytearray(idx_bytes(random_images(rng, 2, (28, 28))))
    payload[2] = 0x07  # no such IDX type
    assert "wrong magic number" in _idx_error(tmp_path, bytes(payload), gz=True)


def test_idx_truncated(tmp_path, rng):
    payload = idx_bytes(random_images(rng, 3, (28, 28)))
    message = _idx_error(tmp_path, payload[:-100], gz=True)
    assert "truncated data" in message and "(3, 28, 28)" in message
    assert "truncated" in _idx_error(tmp_path, payload[:2], name="tiny")
    assert "truncated" in _idx_error(tmp_path, payload[:9], name="header")  # header cut mid-dimension


def test_idx_truncated_gzip_stream(tmp_path, rng):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(random_images(rng, 3, (28, 28))))[:-40])
    with pytest.raises(RawFormatError, match="truncated gzip") as info:
        formats.read_idx(path)
    assert str(path) in str(info.value)


def test_idx_trailing_bytes(tmp_path, rng):
    assert "trailing bytes" in _idx_error(tmp_path, idx_bytes(random_images(rng, 2, (4, 4))) + b"\0\0")


def test_idx_wrong_dimensions(tmp_path, rng):
    flat = idx_bytes(random_images(rng, 3, (784,)))
    assert "wrong dimensions" in _idx_error(tmp_path, flat, reader=formats.read_idx_images)
    labels_2d = idx_bytes(rng.integers(0, 10, (3, 2)).astype(np.uint8))
    message = _idx_error(tmp_path, labels_2d, reader=lambda p: formats.read_idx_labels(p, 10))
    assert "wrong dimensions" in message
    ints = idx_bytes(np.zeros((2, 3, 3), ">i4"), type_code=0x0C)
    assert "unsigned bytes" in _idx_error(tmp_path, ints, reader=formats.read_idx_images)


def test_idx_label_out_of_range(tmp_path):
    labels = np.array([0, 3, 10, 9, 11], np.uint8)
    message = _idx_error(tmp_path, idx_bytes(labels), reader=lambda p: formats.read_idx_labels(p, 10))
    assert "label out of range: 10 at position 2 (2 such labels)" in message


def test_idx_count_mismatch(tmp_path, rng):
    paths = write_idx_dataset(tmp_path, {"train": (random_images(rng, 5, (28, 28)),
                                                   rng.integers(0, 10, 4).astype(np.uint8))})
    with pytest.raises(RawFormatError, match="5 images but 4 labels") as info:
        formats.read_idx_split(*paths["train"], num_classes=10)
    assert str(paths["train"][0]) in str(info.value) and str(paths["train"][1]) in str(info.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        formats.read_idx(tmp_path / "absent.gz")


# ------------------------------------------------------------------------------------------- CIFAR


def _cifar10_data(rng, per_batch=3, test=4):
    batches = [(random_images(rng, per_batch, (32, 32, 3)), rng.integers(0, 10, per_batch)) for _ in range(5)]
    return batches, (random_images(rng, test, (32, 32, 3)), rng.integers(0, 10, test))


def _check_cifar10(splits, batches, test):
    np.testing.assert_array_equal(splits["train"].images, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(splits["train"].labels, np.concatenate([b[1] for b in batches]))
    np.testing.assert_array_equal(splits["test"].images, test[0])
    np.testing.assert_array_equal(splits["test"].labels, test[1])
    assert splits["train"].images.dtype == np.uint8 and splits["train"].labels.dtype == np.int32


@pytest.mark.parametrize("packed", ["tar", "folder", "parent"])
def test_cifar10_python(tmp_path, rng, packed):
    batches, test = _cifar10_data(rng)
    members = cifar10_python_members(batches, test)
    if packed == "tar":
        source = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    else:
        folder = write_folder(tmp_path, "cifar-10-batches-py", members)
        source = folder if packed == "folder" else tmp_path
    splits, names = formats.read_cifar10_python(source)
    assert names == CIFAR10_NAMES
    _check_cifar10(splits, batches, test)


def test_cifar_pixel_layout(tmp_path):
    """Row layout: value at [c * 1024 + y * 32 + x] is pixel (y, x) of channel c."""
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 2, 5, 1] = 200  # green at row 2, column 5
    image[0, 31, 0, 2] = 77  # blue at row 31, column 0
    members = cifar10_python_members([(image, [1])] * 5, (image, [2]))
    rows = np.zeros(3072, np.uint8)
    rows[1 * 1024 + 2 * 32 + 5] = 200
    rows[2 * 1024 + 31 * 32 + 0] = 77
    batch = pickle.loads(members["test_batch"], encoding="bytes")
    np.testing.assert_array_equal(batch[b"data"][0], rows)  # the writer follows the official layout
    splits, _ = formats.read_cifar10_python(write_folder(tmp_path, "cifar-10-batches-py", members))
    assert splits["test"].images[0, 2, 5, 1] == 200 and splits["test"].images[0, 31, 0, 2] == 77
    assert splits["test"].images.sum() == 277


@pytest.mark.parametrize("packed", ["tar", "folder"])
def test_cifar10_binary(tmp_path, rng, packed):
    batches, test = _cifar10_data(rng)
    members = cifar10_binary_members(batches, test)
    source = (write_tar_gz(tmp_path / "cifar-10-binary.tar.gz", "cifar-10-batches-bin", members)
              if packed == "tar" else write_folder(tmp_path, "cifar-10-batches-bin", members))
    splits, names = formats.read_cifar10_binary(source)
    assert names == CIFAR10_NAMES
    _check_cifar10(splits, batches, test)


@pytest.mark.parametrize("packed", ["tar", "folder"])
def test_cifar100_python(tmp_path, rng, packed):
    train = (random_images(rng, 6, (32, 32, 3)), rng.integers(0, 100, 6), rng.integers(0, 20, 6))
    test = (random_images(rng, 2, (32, 32, 3)), [99, 0], [19, 0])
    members = cifar100_python_members(train, test, FINE, COARSE)
    source = (write_tar_gz(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", members)
              if packed == "tar" else write_folder(tmp_path, "cifar-100-python", members))
    splits, fine, coarse = formats.read_cifar100_python(source)
    assert fine == FINE and coarse == COARSE
    np.testing.assert_array_equal(splits["train"].images, train[0])
    np.testing.assert_array_equal(splits["train"].labels, train[1])
    np.testing.assert_array_equal(splits["train"].extra_labels["coarse_label"], train[2])
    np.testing.assert_array_equal(splits["test"].labels, [99, 0])
    np.testing.assert_array_equal(splits["test"].extra_labels["coarse_label"], [19, 0])


def _cifar10_error(tmp_path, members, reader=formats.read_cifar10_python, folder="cifar-10-batches-py"):
    source = write_folder(tmp_path, folder, members)
    with pytest.raises(RawFormatError) as info:
        reader(source)
    return str(info.value)


def test_cifar10_wrong_dimensions(tmp_path, rng):
    batches, test = _cifar10_data(rng)
    members = cifar10_python_members(batches, test)
    bad = pickle.loads(members["data_batch_3"], encoding="bytes")
    bad[b"data"] = bad[b"data"][:, :3000]
    members["data_batch_3"] = pickle.dumps(bad, protocol=3)
    message = _cifar10_error(tmp_path, members)
    assert "data_batch_3" in message and "wrong dimensions" in message and "(3, 3000)" in message


def test_cifar10_label_out_of_range(tmp_path, rng):
    batches, test = _cifar10_data(rng)
    test = (test[0], np.array([0, 1, 10, 2]))
    message = _cifar10_error(tmp_path, cifar10_python_members(batches, test))
    assert "test_batch" in message and "label out of range: 10 at position 2" in message


def test_cifar10_count_mismatch(tmp_path, rng):
    batches, test = _cifar10_data(rng)
    batches[0] = (batches[0][0], batches[0][1][:2])
    message = _cifar10_error(tmp_path, cifar10_python_members(batches, test))
    assert "data_batch_1" in message and "3 images but 2 labels" in message


def test_cifar10_truncated_pickle(tmp_path, rng):
    batches, test = _cifar10_data(rng)
    members = cifar10_python_members(batches, test)
    members["data_batch_2"] = members["data_batch_2"][:500]
    message = _cifar10_error(tmp_path, members)
    assert "data_batch_2" in message and "not a readable pickle" in message


def test_cifar10_truncated_archive(tmp_path, rng):
    batches, test = _cifar10_data(rng, per_batch=50)
    path = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py",
                        cifar10_python_members(batches, test))
    path.write_bytes(path.read_bytes()[:-4000])
    with pytest.raises(RawFormatError) as info:
        formats.read_cifar10_python(path)
    message = str(info.value)
    assert str(path) in message and ("truncated" in message or "corrupt" in message)


def test_cifar10_missing_member(tmp_path, rng):
    batches, test = _cifar10_data(rng)
    members = cifar10_python_members(batches, test)
    del members["data_batch_5"]
    path = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
    with pytest.raises(RawFormatError, match="cifar-10-batches-py/data_batch_5 missing"):
        formats.read_cifar10_python(path)
    with pytest.raises(FileNotFoundError, match="data_batch_5"):
        formats.read_cifar10_python(write_folder(tmp_path / "f", "cifar-10-batches-py", members))


def test_cifar10_binary_corrupt(tmp_path, rng):
    batches, test = _cifar10_data(rng)
    members = cifar10_binary_members(batches, test)
    members["data_batch_4.bin"] = members["data_batch_4.bin"][:-10]
    message = _cifar10_error(tmp_path / "a", members, formats.read_cifar10_binary, "cifar-10-batches-bin")
    assert "data_batch_4.bin" in message and "truncated data" in message
    batches[1] = (batches[1][0], np.array([3, 250, 1]))
    message = _cifar10_error(tmp_path / "b", cifar10_binary_members(batches, test), formats.read_cifar10_binary,
                             "cifar-10-batches-bin")
    assert "data_batch_2.bin" in message and "label out of range: 250 at position 1" in message


def test_cifar100_corrupt(tmp_path, rng):
    train = (random_images(rng, 4, (32, 32, 3)), [1, 2, 3, 100], [0, 1, 2, 3])
    test = (random_images(rng, 2, (32, 32, 3)), [1, 2], [0, 1])
    source = write_folder(tmp_path / "a", "cifar-100-python", cifar100_python_members(train, test, FINE, COARSE))
    with pytest.raises(RawFormatError, match=r"train: label out of range: 100 at position 3 \(1 such labels\); valid labels are 0..99"):
        formats.read_cifar100_python(source)
    train = (train[0], [1, 2, 3, 4], [0, 1, 20, 3])
    source = write_folder(tmp_path / "b", "cifar-100-python", cifar100_python_members(train, test, FINE, COARSE))
    with pytest.raises(RawFormatError, match="valid labels are 0..19"):
        formats.read_cifar100_python(source)
    source = write_folder(tmp_path / "c", "cifar-100-python",
                          cifar100_python_members(train, test, FINE[:99], COARSE))
    with pytest.raises(RawFormatError, match="fine_label_names lists 99 names, expected 100"):
        formats.read_cifar100_python(source)


# ------------------------------------------------------------------------------------ mnist.pkl.gz


def _mnist_parts(rng, sizes=(5, 3, 4)):
    return [(random_images(rng, n, (28, 28)), rng.integers(0, 10, n)) for n in sizes]


def test_mnist_pkl_exact_pixels(tmp_path, rng):
    parts = _mnist_parts(rng)
    parts[0][0][0, 0, :4] = [0, 1, 128, 255]  # extremes convert exactly
    splits = formats.read_mnist_pkl_gz(write_mnist_pkl_gz(tmp_path / "mnist.pkl.gz", parts))
    np.testing.assert_array_equal(splits["train"].images[..., 0], np.concatenate([parts[0][0], parts[1][0]]))
    np.testing.assert_array_equal(splits["train"].labels, np.concatenate([parts[0][1], parts[1][1]]))
    np.testing.assert_array_equal(splits["test"].images[..., 0], parts[2][0])
    np.testing.assert_array_equal(splits["test"].labels, parts[2][1])
    assert splits["train"].images.shape == (8, 28, 28, 1) and splits["train"].images.dtype == np.uint8


def _pkl_error(tmp_path, obj):
    path = write_raw_pkl_gz(tmp_path / "mnist.pkl.gz", obj)
    with pytest.raises(RawFormatError) as info:
        formats.read_mnist_pkl_gz(path)
    assert str(path) in str(info.value)
    return str(info.value)


def _encode(parts):
    return tuple((x.reshape(len(x), -1).astype(np.float32) / 256, np.asarray(y, np.int64)) for x, y in parts)


def test_mnist_pkl_corrupt(tmp_path, rng):
    parts = _encode(_mnist_parts(rng))
    bad = list(parts)
    bad[1] = (parts[1][0][:, :783], parts[1][1])
    assert "wrong dimensions: valid images must be [n, 784]" in _pkl_error(tmp_path, tuple(bad))
    bad[1] = (parts[1][0] + np.float32(0.001), parts[1][1])
    assert "not exact multiples k/256" in _pkl_error(tmp_path, tuple(bad))
    bad[1] = (parts[1][0], parts[1][1][:2])
    assert "count mismatch in valid: 3 images, 2 labels" in _pkl_error(tmp_path, tuple(bad))
    bad[1] = (parts[1][0], np.array([0, 12, 1]))
    assert "label out of range: 12" in _pkl_error(tmp_path, tuple(bad))
    assert "(train, valid, test) tuple" in _pkl_error(tmp_path, parts[:2])
    path = tmp_path / "cut.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(parts))[:-200])
    with pytest.raises(RawFormatError, match="truncated"):
        formats.read_mnist_pkl_gz(path)


# ------------------------------------------------------------------------------- pickles that run code


class _RunsCode:
    """Unpickling this object calls function(argument): the classic pickle exploit."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def _exploits(marker):
    """(payload, the global its pickle names) pairs that, unpickled by plain pickle, create `marker`."""
    return [(_RunsCode(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
            (_RunsCode(builtins.eval, f"open({str(marker)!r}, 'w').write('ran')"), "builtins.eval")]


def test_exploit_payloads_run_under_plain_pickle(tmp_path):
    """The payloads used below do run code when read with plain pickle (so the tests below can fail)."""
    for i, (payload, _) in enumerate(_exploits(tmp_path / "marker")):
        pickle.loads(pickle.dumps(payload, protocol=2))
        assert (tmp_path / "marker").exists(), i
        (tmp_path / "marker").unlink()


def test_mnist_pkl_that_runs_code_is_refused(tmp_path, rng):
    marker = tmp_path / "marker"
    parts = _encode(_mnist_parts(rng))
    for payload, global_name in _exploits(marker):
        for obj in (payload, (parts[0], (parts[1][0], payload), parts[2])):  # alone, or hidden in the labels
            path = write_raw_pkl_gz(tmp_path / "mnist.pkl.gz", obj)
            with pytest.raises(UnsafePickleError) as info:
                formats.read_mnist_pkl_gz(path)
            assert not marker.exists()
            message = str(info.value)
            assert message.startswith(f"{path}: refused to unpickle") and repr(global_name) in message
            assert info.value.global_name == global_name and info.value.path == str(path)
            assert isinstance(info.value, RawFormatError)  # callers that handle corrupt files handle this


@pytest.mark.parametrize("packed", ["tar", "folder"])
def test_cifar_batch_that_runs_code_is_refused(tmp_path, rng, packed):
    marker = tmp_path / "marker"
    batches, test = _cifar10_data(rng)
    for payload, global_name in _exploits(marker):
        members = cifar10_python_members(batches, test)
        good = pickle.loads(members["data_batch_2"], encoding="bytes")
        good[b"labels"] = payload
        members["data_batch_2"] = pickle.dumps(good, protocol=3)
        root = tmp_path / global_name
        source = (write_tar_gz(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", members)
                  if packed == "tar" else write_folder(root, "cifar-10-batches-py", members))
        with pytest.raises(UnsafePickleError, match=repr(global_name)) as info:
            formats.read_cifar10_python(source)
        assert not marker.exists()
        assert "data_batch_2" in info.value.path and str(root) in info.value.path
    meta = {"meta": pickle.dumps(_RunsCode(os.system, f"touch {marker}"))}
    with pytest.raises(UnsafePickleError, match="system"):
        formats.read_cifar100_python(write_folder(tmp_path, "cifar-100-python", meta))
    assert not marker.exists()


def test_pickle_allow_list_admits_numpy_arrays_only(tmp_path):
    """numpy arrays of any dtype and shape load, as pickled by numpy 2 (numpy._core) or numpy 1
    (numpy.core); other numpy globals, even harmless ones, are refused."""
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    current = pickle.dumps({b"x": array, "n": [1, 2.5, "s", None, True]}, protocol=3)
    loaded = formats._unpickle("f", current)
    np.testing.assert_array_equal(loaded[b"x"], array)
    assert loaded[b"x"].dtype == np.float32 and loaded["n"] == [1, 2.5, "s", None, True]
    numpy1 = current.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert numpy1 != current
    np.testing.assert_array_equal(formats._unpickle("f", numpy1)[b"x"], array)
    with pytest.raises(UnsafePickleError, match="multiarray.scalar"):  # numpy scalars: not in the files
        formats._unpickle("f", pickle.dumps(np.float32(1.5), protocol=3))
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):  # Python 3 protocol 2 bytes
        formats._unpickle("f", pickle.dumps(b"abc", protocol=2))
