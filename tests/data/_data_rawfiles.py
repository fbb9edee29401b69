"""Writers of tiny raw files in each official format, for the data tests.

Written from the format specifications (not with cnnlab's readers) so the readers are checked against
an independent encoding: IDX headers by hand with struct, CIFAR pickles as dicts of bytes keys in the
official member layout, CIFAR binary records as label byte + R, G, B planes.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


def random_images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def idx_bytes(array: np.ndarray, *, type_code: int = 0x08) -> bytes:
    """IDX encoding: 0x0000, type byte, ndim byte, big-endian uint32 dims, then the raw data."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_bytes(path: Path, payload: bytes, *, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_idx_dataset(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], *, gz: bool = True):
    """Writes {train,test}: (uint8 [n, 28, 28], uint8 [n]) as the four official MNIST-style IDX files."""
    stems = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    paths = {}
    for split, (images, labels) in splits.items():
        image_stem, label_stem = stems[split]
        paths[split] = (write_bytes(folder / image_stem, idx_bytes(images), gz=gz),
                        write_bytes(folder / label_stem, idx_bytes(labels), gz=gz))
    return paths


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """[n, 32, 32, 3] -> [n, 3072]: for each image the 1024 red values, then green, then blue, row-major."""
    n = len(images)
    rows = np.empty((n, 3072), np.uint8)
    for c in range(3):
        rows[:, c * 1024:(c + 1) * 1024] = images[:, :, :, c].reshape(n, 1024)
    return rows


def _pickle(obj) -> bytes:
    # Protocol 3 writes the same opcodes as the official Python 2 files (GLOBAL numpy names, dicts,
    # lists) but bytes as BINBYTES; protocol 2 from Python 3 would add the global _codecs.encode.
    return pickle.dumps(obj, protocol=3)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_python_members(batches: list[tuple[np.ndarray, np.ndarray]], test: tuple[np.ndarray, np.ndarray],
                           label_names=CIFAR10_NAMES) -> dict[str, bytes]:
    members = {"batches.meta": _pickle({b"label_names": [n.encode() for n in label_names],
                                        b"num_cases_per_batch": 10000, b"num_vis": 3072})}
    for i, (images, labels) in enumerate(batches, start=1):
        members[f"data_batch_{i}"] = _pickle({b"batch_label": f"training batch {i} of 5".encode(),
                                             b"labels": [int(v) for v in labels], b"data": cifar_rows(images),
                                             b"filenames": [b"x.png"] * len(labels)})
    images, labels = test
    members["test_batch"] = _pickle({b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in labels],
                                     b"data": cifar_rows(images), b"filenames": [b"x.png"] * len(labels)})
    return members


def cifar10_binary_members(batches, test, label_names=CIFAR10_NAMES) -> dict[str, bytes]:
    def records(images, labels):
        return np.concatenate([np.asarray(labels, np.uint8)[:, None], cifar_rows(images)], axis=1).tobytes()

    members = {"batches.meta.txt": ("\n".join(label_names) + "\n\n").encode()}
    for i, (images, labels) in enumerate(batches, start=1):
        members[f"data_batch_{i}.bin"] = records(images, labels)
    members["test_batch.bin"] = records(*test)
    return members


def cifar100_python_members(train, test, fine_names, coarse_names) -> dict[str, bytes]:
    members = {"meta": _pickle({b"fine_label_names": [n.encode() for n in fine_names],
                                b"coarse_label_names": [n.encode() for n in coarse_names]})}
    for name, (images, fine, coarse) in (("train", train), ("test", test)):
        members[name] = _pickle({b"filenames": [b"x.png"] * len(fine), b"batch_label": name.encode(),
                                 b"fine_labels": [int(v) for v in fine], b"coarse_labels": [int(v) for v in coarse],
                                 b"data": cifar_rows(images)})
    return members


def write_folder(root: Path, folder: str, members: dict[str, bytes]) -> Path:
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    for name, payload in members.items():
        (target / name).write_bytes(payload)
    return target


def write_tar_gz(path: Path, folder: str, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def write_mnist_pkl_gz(path: Path, parts) -> Path:
    """parts: [(uint8 [n, 28, 28], labels [n])] * 3 (train, valid, test) -> float32 k/256 pickle."""
    encoded = tuple((images.reshape(len(images), -1).astype(np.float32) / np.float32(256),
                     np.asarray(labels, np.int64)) for images, labels in parts)
    return write_raw_pkl_gz(path, encoded)


def write_raw_pkl_gz(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f, protocol=3)  # see _pickle
    return path
