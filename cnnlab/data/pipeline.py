"""Input pipeline: seeded per-epoch shuffling, fixed global batches, padding masks, mesh sharding, and
jitted on-device preprocessing.

Host side (numpy): every process computes the same global order of examples for an epoch from
(seed, epoch), cuts it into global batches of `batch_size`, and keeps its own contiguous slice of
`batch_size // process_count` rows of each. Evaluation pads the last global batch and marks the padding
with mask=False, so summing per-example metrics under the mask counts every example exactly once.

Device side (jax): `cnnlab.parallel.put_host_batch` assembles the per-process slices into global arrays sharded on the batch
axis over a mesh axis; `normalize` and `augment` are jitted functions on those arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool) -> int:
    """Global batches per epoch: floor(N / B) when dropping the remainder, else ceil(N / B)."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order of examples in `epoch`: int64 [num_examples], a permutation of 0..N-1.

    A pure function of (num_examples, seed, epoch): numpy's PCG64 seeded with the entropy (seed, epoch),
    so every process and every resumed run computes the same order, and each epoch gets a different one.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples).astype(np.int64)


def epoch_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int, epoch: int,
                  shuffle: bool = True, drop_remainder: bool = True, start_batch: int = 0,
                  process_index: int | None = None, process_count: int | None = None) -> Iterator[dict]:
    """Yields this process's slice of each global batch of one epoch.

    images: [N, H, W, C] (any dtype, usually uint8); labels: [N] integers. batch_size is the GLOBAL batch
    size and must be divisible by process_count. Each yielded dict holds host numpy arrays
    {"image": [b, H, W, C] (images' dtype), "label": int32 [b], "mask": bool [b]} with
    b = batch_size // process_count: rows [process_index * b, (process_index + 1) * b) of the global batch.
    With drop_remainder=False the last global batch is padded with zero images, label 0 and mask False.
    start_batch skips the epoch's first batches (exact resume: the remaining batches are the same ones a
    run from batch 0 would have produced). process_index/process_count default to jax's.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim < 1 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"images [N, ...] and labels [N] must have the same N, got {images.shape} and "
                         f"{labels.shape}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(f"global batch_size {batch_size} must be a positive multiple of the process count "
                         f"{process_count}")
    total = num_batches(len(labels), batch_size, drop_remainder=drop_remainder)
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch {start_batch} outside [0, {total}] (batches in this epoch)")
    order = (epoch_permutation(len(labels), seed=seed, epoch=epoch) if shuffle
             else np.arange(len(labels), dtype=np.int64))
    local = batch_size // process_count
    for batch in range(start_batch, total):
        # Global rows [batch * B + process_index * b, ... + b) of the epoch's order; past the end = padding.
        begin = batch * batch_size + process_index * local
        rows = order[begin:begin + local]
        valid = len(rows)
        image = np.zeros((local, *images.shape[1:]), images.dtype)
        label = np.zeros((local,), np.int32)
        mask = np.zeros((local,), bool)
        image[:valid] = images[rows]
        label[:valid] = labels[rows]
        mask[:valid] = True
        yield {"image": image, "label": label, "mask": mask}


@functools.partial(jax.jit, static_argnames=("dtype",))
def normalize(images: jax.Array, mean: Sequence[float] | jax.Array, std: Sequence[float] | jax.Array,
              dtype=jnp.float32) -> jax.Array:
    """uint8 [..., C] pixels -> (x / 255 - mean) / std in `dtype`; mean, std: per-channel [C], [0,1] units.

    Computed in float32 and cast to `dtype` at the end (bfloat16 output keeps float32 arithmetic).
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    scaled = jnp.asarray(images).astype(jnp.float32) / 255.0
    return ((scaled - mean) / std).astype(dtype)


@functools.partial(jax.jit, static_argnames=("pad", "flip"))
def augment(key: jax.Array, images: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
    """Random crop with zero padding, then random horizontal flip; images [N, H, W, C] -> same shape/dtype.

    Each image is zero-padded by `pad` pixels on every side and an H x W window is cut at an offset drawn
    uniformly from {0, ..., 2 * pad} in each direction (pad=0: no crop); with flip=True each image is
    mirrored left-right with probability 1/2. Image i uses jax.random.fold_in(key, i), so the result is a
    function of (key, images) only. `key` is a typed key from jax.random.key.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    _, height, width, _ = images.shape

    def one(index, image):
        crop_key, flip_key = jax.random.split(jax.random.fold_in(key, index))
        if pad:
            padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
            dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
            image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (height, width, image.shape[-1]))
        if flip:
            image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1, :], image)
        return image

    index = jnp.arange(images.shape[0])
    # With explicitly sharded inputs (jax.make_mesh's default axis type), vmap needs the per-image index
    # sharded like the images' batch axis.
    sharding = jax.typeof(images).sharding
    if len(sharding.spec) and sharding.spec[0] is not None:
        index = jax.sharding.reshard(index, NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0])))
    return jax.vmap(one)(index, images)
