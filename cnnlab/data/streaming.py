"""Streaming input pipeline for datasets that do not fit in host memory: grain over any random-access source.

A source is anything with `len(source)` and `source[i]` returning a record dict {"image": encoded JPEG/PNG bytes,
"label": int, ...}: a TFDS ArrayRecord data source (`tfds.data_source(...)`), or a list of such dicts in tests.

The order of an epoch is the in-memory path's (`pipeline.epoch_permutation(N, seed, epoch)`), cut into global
batches the same way (`pipeline.epoch_batches`): process p of P reads only rows [p * b, (p + 1) * b) of each global
batch of B = P * b examples. Each grain element is one whole local batch, built in a worker process (decode, crop,
flip, stack), so a batch crosses the process boundary once. The random crop and flip of an example are drawn from
np.random.default_rng([seed, epoch, example index]): a pure function of (seed, epoch, index), so the batches do not
depend on the number of workers, on the number of processes, or on where the epoch was resumed.

Exact resume: the position in the data is (epoch, start_batch). A run restarted with start_batch = the number of
batches of the epoch already consumed gets exactly the batches an uninterrupted run gets; that pair is all a
checkpoint needs to hold. (grain's own iterator state, `iterator.get_state()` / `set_state()`, works too and
restores the same position, but is tied to the pipeline's construction; the pair is not.)

Host memory is bounded by the buffers: `prefetch_batches` batches in the main process plus one per worker, and the
order of one epoch (8 bytes per example); never by the dataset's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import grain
import numpy as np
from absl import flags

from cnnlab.data import decode, pipeline


class RandomAccessSource(Protocol):
    """What the pipeline reads: len() and record dicts by index (a TFDS ArrayRecord data source is one)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when the caller did not say: worker processes never need jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    return process_index, process_count


def epoch_rows(num_examples: int, *, global_batch_size: int, seed: int, epoch: int, shuffle: bool,
               drop_remainder: bool, process_index: int, process_count: int) -> np.ndarray:
    """This process's example indices for each global batch of an epoch: int64 [num_batches, b], -1 = padding.

    b = global_batch_size // process_count; row r of batch k holds example order[k * B + process_index * b + r]
    of the epoch's order (pipeline.epoch_permutation when shuffle, else 0..N-1), exactly the rows
    pipeline.epoch_batches gives this process. Padding (-1) appears only in the last batch, without
    drop_remainder.
    """
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the process "
                         f"count {process_count}")
    if num_examples <= 0:
        raise ValueError(f"the source is empty (len {num_examples}); prepare the dataset first")
    order = (pipeline.epoch_permutation(num_examples, seed=seed, epoch=epoch) if shuffle
             else np.arange(num_examples, dtype=np.int64))
    total = pipeline.num_batches(num_examples, global_batch_size, drop_remainder=drop_remainder)
    padded = np.full(total * global_batch_size, -1, np.int64)
    kept = min(num_examples, len(padded))
    padded[:kept] = order[:kept]
    local = global_batch_size // process_count
    return padded.reshape(total, process_count, local)[:, process_index].copy()


@dataclasses.dataclass(frozen=True)
class _LoadBatch:
    """grain map: local batch number -> {"image": uint8 [b, S, S, 3], "label": int32 [b], "mask": bool [b]}.

    Runs in grain's worker processes (pickled there with the source and the epoch's rows).
    """

    source: Any
    rows: np.ndarray  # int64 [num_batches, b], -1 = padding
    image_size: int
    train: bool
    seed: int
    epoch: int
    augment: bool = True

    def __call__(self, batch: int) -> dict[str, np.ndarray]:
        indices = self.rows[batch]
        size = self.image_size
        image = np.zeros((len(indices), size, size, 3), np.uint8)
        label = np.zeros((len(indices),), np.int32)
        mask = indices >= 0
        for row, index in enumerate(indices):
            if index < 0:
                continue
            record = self.source[int(index)]
            try:
                if self.train and self.augment:
                    rng = np.random.default_rng([self.seed, self.epoch, int(index)])
                    image[row] = decode.decode_random_crop(record["image"], size, rng)
                else:
                    image[row] = decode.decode_center_crop(record["image"], size)
            except ValueError as error:
                name = record.get("file_name", b"?")
                name = name.decode() if isinstance(name, bytes) else str(name)
                raise ValueError(f"example {index} ({name}): {error}") from error
            label[row] = int(np.asarray(record["label"]))
        return {"image": image, "label": label, "mask": mask}


def _batches(source: RandomAccessSource, *, train: bool, global_batch_size: int, seed: int, epoch: int,
             image_size: int, process_index: int | None, process_count: int | None, worker_count: int,
             start_batch: int, prefetch_batches: int, read_threads: int,
             augment: bool = True) -> grain.DatasetIterator:
    if image_size <= 0:
        raise ValueError(f"image_size must be > 0, got {image_size}")
    if worker_count < 0 or prefetch_batches < 0 or read_threads < 1:
        raise ValueError(f"need worker_count >= 0, prefetch_batches >= 0 and read_threads >= 1, got {worker_count}, "
                         f"{prefetch_batches}, {read_threads}")
    process_index, process_count = _process(process_index, process_count)
    rows = epoch_rows(len(source), global_batch_size=global_batch_size, seed=seed, epoch=epoch, shuffle=train,
                      drop_remainder=train, process_index=process_index, process_count=process_count)
    if not 0 <= start_batch <= len(rows):
        raise ValueError(f"start_batch {start_batch} outside [0, {len(rows)}] (batches in this epoch)")
    load = _LoadBatch(source=source, rows=rows, image_size=image_size, train=train, seed=seed, epoch=epoch,
                      augment=augment)
    dataset = grain.MapDataset.range(start_batch, len(rows)).map(load)
    # Each element is a whole batch; `read_threads` threads per process build batches concurrently (PIL decodes and
    # resizes without the GIL, so threads scale too). The buffer counts batches, so it is what bounds host memory
    # (grain's default of 500 elements would not).
    buffer = max(prefetch_batches, read_threads) if prefetch_batches or read_threads > 1 else 0
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=read_threads if buffer else 0,
                                                         prefetch_buffer_size=buffer))
    if worker_count:
        if not flags.FLAGS.is_parsed():
            # grain's worker pool reads absl flags (its profiler switch); outside an absl app (tests, notebooks,
            # benchmarks) nothing parsed them, so take the defaults rather than fail.
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                                   per_worker_buffer_size=1))
    return iter(dataset)


def train_batches(source: RandomAccessSource, *, global_batch_size: int, seed: int, epoch: int, image_size: int,
                  process_index: int | None = None, process_count: int | None = None, worker_count: int = 0,
                  start_batch: int = 0, prefetch_batches: int = 2, read_threads: int = 1,
                  augment: bool = True) -> grain.DatasetIterator:
    """This process's training batches of one epoch, from batch `start_batch` on.

    Yields {"image": uint8 [b, S, S, 3], "label": int32 [b], "mask": bool [b] (all True)} with
    b = global_batch_size // process_count and S = image_size: seeded shuffle (seed, epoch), the incomplete last
    global batch dropped, Inception random-resized crop + horizontal flip per example (augment=False: the
    evaluation view, resize + centre crop, in the shuffled training order). worker_count: grain worker
    processes decoding (0: decode in this process). read_threads: batches built concurrently by threads in each
    process (PIL releases the GIL while decoding and resizing). prefetch_batches: batches buffered ahead per
    process (memory bound: about (prefetch_batches + 1) batches per process). process_index/process_count default
    to jax's. The returned
    grain iterator also has get_state()/set_state() and close() (close it to stop the workers early).
    """
    return _batches(source, train=True, global_batch_size=global_batch_size, seed=seed, epoch=epoch,
                    image_size=image_size, process_index=process_index, process_count=process_count,
                    worker_count=worker_count, start_batch=start_batch, prefetch_batches=prefetch_batches,
                    read_threads=read_threads, augment=augment)


def eval_batches(source: RandomAccessSource, *, global_batch_size: int, image_size: int,
                 process_index: int | None = None, process_count: int | None = None, worker_count: int = 0,
                 start_batch: int = 0, prefetch_batches: int = 2,
                 read_threads: int = 1) -> grain.DatasetIterator:
    """This process's evaluation batches, in source order: resize the shorter side to S * 256 / 224, centre crop
    S x S. The last global batch is padded with zero images, label 0 and mask False, so summing per-example
    metrics under the mask over all processes counts every example exactly once. Same layout as train_batches.
    """
    return _batches(source, train=False, global_batch_size=global_batch_size, seed=0, epoch=0,
                    image_size=image_size, process_index=process_index, process_count=process_count,
                    worker_count=worker_count, start_batch=start_batch, prefetch_batches=prefetch_batches,
                    read_threads=read_threads)


def num_train_batches(source: RandomAccessSource | int, global_batch_size: int) -> int:
    """Training batches per epoch (the incomplete last global batch is dropped)."""
    size = source if isinstance(source, int) else len(source)
    return pipeline.num_batches(size, global_batch_size, drop_remainder=True)


def num_eval_batches(source: RandomAccessSource | int, global_batch_size: int) -> int:
    """Evaluation batches (the last one padded)."""
    size = source if isinstance(source, int) else len(source)
    return pipeline.num_batches(size, global_batch_size, drop_remainder=False)


def in_memory_source(images: Sequence[bytes], labels: Sequence[int]) -> list[dict[str, Any]]:
    """A list-of-records source from encoded images and labels (tests, small demos)."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images and {len(labels)} labels")
    return [{"image": image, "label": int(label), "file_name": f"{index}"}
            for index, (image, label) in enumerate(zip(images, labels))]
