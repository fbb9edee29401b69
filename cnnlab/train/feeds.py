"""Where a training run's batches come from: host memory (small datasets) or a stream of encoded images.

    feed = make_feed(config, mesh_batch_sizes...)    # chosen by dataset, overridable by config.streaming
    for batch in feed.train_batches(epoch, start_batch): ...   # this process's rows of each global batch
    for batch in feed.eval_batches(): ...                      # padded last batch, "mask" False on padding

Both feeds yield the same host batches, {"image": uint8 [b, H, W, C], "label": int32 [b], "mask": bool [b]}
with b = global batch / process count, in an order that is a pure function of (seed, epoch) and independent of
the position an epoch was resumed at: the position in the data is (epoch, start_batch), derived from the
optimizer step and written into every checkpoint's metadata (``position``), so a run killed at any moment sees
exactly the batches of an uninterrupted run.

- ``InMemoryFeed``: the MNIST/CIFAR/digits arrays in host memory (``pipeline.epoch_batches``); augmentation
  (pad-crop, flip) runs on the device inside the train step. Fastest where the data fit.
- ``StreamingFeed``: the encoded-image datasets (imagenet2012, prepared image folders) read record by record
  through ``cnnlab.data.streaming`` (grain): decoding, Inception random-resized crop and flip on the host, in
  ``data_threads`` threads and ``data_workers`` worker processes, ``prefetch_batches`` ahead. Host memory is
  bounded by those buffers, not by the dataset's size.

``config.streaming``: None (default) streams exactly the encoded-image datasets; False decodes a (small)
encoded-image dataset once into memory at ``image_size`` (the evaluation view: shorter side resized, centre
crop) and trains it with the in-memory path; True on an in-memory dataset is refused.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from cnnlab import data
from cnnlab.data import decode, loading, pipeline, streaming

DEFAULT_STREAM_IMAGE_SIZE = 224
# Host memory a decoded in-memory copy of an encoded-image dataset (config.streaming=False) may take.
MAX_DECODED_BYTES = 8 << 30


@dataclasses.dataclass
class Position:
    """Where a run is in its data: epoch and the number of that epoch's batches already consumed."""

    epoch: int
    batch: int

    @classmethod
    def of_step(cls, step: int, steps_per_epoch: int) -> "Position":
        return cls(step // steps_per_epoch, step % steps_per_epoch)

    def as_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "batch": int(self.batch)}


class Feed(abc.ABC):
    """The host batches of one run (see the module docstring). Subclasses set the attributes below."""

    streaming: bool
    num_train: int          # training examples (the split after slicing)
    num_eval: int           # evaluation examples
    image_shape: tuple      # (H, W, C) of the images in the batches
    device_augment: bool    # True: the train step augments on device; False: the host already did
    batch_size: int         # global
    eval_batch_size: int    # global

    @property
    def steps_per_epoch(self) -> int:
        return pipeline.num_batches(self.num_train, self.batch_size, drop_remainder=True)

    @abc.abstractmethod
    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This process's training batches of ``epoch`` from batch ``start_batch`` on."""

    @abc.abstractmethod
    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's evaluation batches (the last global batch padded, mask False on the padding)."""

    @abc.abstractmethod
    def eval_example(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 [H, W, C] image as the model sees it, label) of one evaluation example."""


class InMemoryFeed(Feed):
    """Batches cut from host arrays; the device step pads, crops and flips (``config.augment``)."""

    streaming = False

    def __init__(self, train: data.Dataset, test: data.Dataset, *, batch_size: int, eval_batch_size: int,
                 seed: int, augment: bool):
        self.train, self.test = train, test
        self.num_train, self.num_eval = len(train.labels), len(test.labels)
        self.image_shape = tuple(train.images.shape[1:])
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.device_augment = augment

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        return pipeline.epoch_batches(self.train.images, self.train.labels, batch_size=self.batch_size,
                                      seed=self.seed, epoch=epoch, start_batch=start_batch)

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        return pipeline.epoch_batches(self.test.images, self.test.labels, batch_size=self.eval_batch_size,
                                      seed=0, epoch=0, shuffle=False, drop_remainder=False)

    def eval_example(self, index: int) -> tuple[np.ndarray, int]:
        return self.test.images[index], int(self.test.labels[index])


class StreamingFeed(Feed):
    """Batches decoded from encoded-image records by ``cnnlab.data.streaming`` (grain), augmented on the host."""

    streaming = True
    device_augment = False

    def __init__(self, train_source, eval_source, *, image_size: int, batch_size: int, eval_batch_size: int,
                 seed: int, augment: bool, workers: int = 0, threads: int = 2, prefetch: int = 2):
        self.train_source, self.eval_source = train_source, eval_source
        self.num_train, self.num_eval = len(train_source), len(eval_source)
        self.image_shape = (image_size, image_size, 3)
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.augment, self.workers, self.threads, self.prefetch = augment, workers, threads, prefetch

    def _options(self) -> dict[str, Any]:
        return {"image_size": self.image_shape[0], "worker_count": self.workers, "read_threads": self.threads,
                "prefetch_batches": self.prefetch}

    def train_batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        return _closing(streaming.train_batches(self.train_source, global_batch_size=self.batch_size,
                                                seed=self.seed, epoch=epoch, start_batch=start_batch,
                                                augment=self.augment, **self._options()))

    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        return _closing(streaming.eval_batches(self.eval_source, global_batch_size=self.eval_batch_size,
                                               **self._options()))

    def eval_example(self, index: int) -> tuple[np.ndarray, int]:
        record = self.eval_source[index]
        return decode.decode_center_crop(record["image"], self.image_shape[0]), int(np.asarray(record["label"]))


def _closing(iterator) -> Iterator[dict[str, np.ndarray]]:
    """Yields from a grain iterator and stops its worker processes when the consumer stops early (a break,
    a signal, an exception), not only at the end of the epoch."""
    try:
        yield from iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _decoded_in_memory(name: str, split: str, source, image_size: int, class_names) -> data.Dataset:
    """An encoded-image split decoded once at the evaluation view (config.streaming=False)."""
    needed = len(source) * image_size * image_size * 3
    if needed > MAX_DECODED_BYTES:
        raise ValueError(f"config.streaming=False would decode {name}:{split} ({len(source):,} images at "
                         f"{image_size}x{image_size}) into {needed / 2**30:.1f} GiB of host memory (limit "
                         f"{MAX_DECODED_BYTES / 2**30:.0f} GiB); leave config.streaming unset to stream it.")
    images = np.zeros((len(source), image_size, image_size, 3), np.uint8)
    labels = np.zeros((len(source),), np.int32)
    for index in range(len(source)):
        record = source[index]
        images[index] = decode.decode_center_crop(record["image"], image_size)
        labels[index] = int(np.asarray(record["label"]))
    return data.Dataset(name, split, images, labels, list(class_names))


def is_streamed_dataset(name: str, data_dir=None) -> bool:
    """Whether ``name`` holds encoded images (imagenet2012, a prepared image folder) rather than arrays."""
    return name in loading.image_dataset_names(data_dir)


def make_feed(config, *, info, data_dir=None) -> Feed:
    """The feed ``config`` asks for (see the module docstring); checks ``streaming`` and ``image_size``."""
    name = config.dataset
    train_split, eval_split = config.get("train_split", "train"), config.get("eval_split", "test")
    batch_size = int(config.batch_size)
    eval_batch_size = int(config.get("eval_batch_size", batch_size))
    seed, augment = int(config.seed), bool(config.augment)
    wanted = config.get("streaming", None)
    if wanted not in (None, True, False):
        raise ValueError(f"config.streaming must be None (by dataset), True or False, got {wanted!r}.")
    encoded = is_streamed_dataset(name, data_dir)
    if not encoded:
        if wanted:
            raise ValueError(f"config.streaming=True needs an encoded-image dataset (imagenet2012 or a prepared "
                             f"image folder: {', '.join(loading.image_dataset_names(data_dir))}); {name} is served "
                             "from memory as arrays. Unset config.streaming.")
        train = data.load(name, train_split, data_dir=data_dir)
        test = data.load(name, eval_split, data_dir=data_dir)
        return InMemoryFeed(train, test, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                            augment=augment)
    size = int(config.get("image_size", 0) or 0) or DEFAULT_STREAM_IMAGE_SIZE
    train_source = _checked_source(name, train_split, data_dir, info)
    eval_source = _checked_source(name, eval_split, data_dir, info)
    if wanted is False:
        train = _decoded_in_memory(name, train_split, train_source, size, info.class_names)
        test = _decoded_in_memory(name, eval_split, eval_source, size, info.class_names)
        return InMemoryFeed(train, test, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                            augment=augment)
    for field in ("data_workers", "prefetch_batches"):
        value = config.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"config.{field} must be a non-negative integer, got {value!r}.")
    threads = config.get("data_threads", 2)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"config.data_threads must be a positive integer, got {threads!r}.")
    return StreamingFeed(train_source, eval_source, image_size=size, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, seed=seed, augment=augment,
                         workers=int(config.get("data_workers", 0)), threads=int(threads),
                         prefetch=int(config.get("prefetch_batches", 2)))


def _checked_source(name: str, split: str, data_dir, info):
    splits = list(info.split_sizes)
    base = split.split("[")[0]
    if base not in splits:
        raise ValueError(f"{name} has no split {base!r}; its splits are {splits} (set config.train_split / "
                         "config.eval_split).")
    source = loading.data_source(name, split, data_dir=data_dir)
    if len(source) == 0:
        raise ValueError(f"{name}:{split} is empty; choose a larger slice.")
    return source
