"""Input pipeline: shuffling, batching, masks, resume, per-process slices, sharding over 8 CPU devices,
normalize and augment."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from cnnlab import parallel
from cnnlab.data import pipeline


def _toy(n, shape=(4, 4, 1)):
    """Image i is filled with i % 256 and its label is i, so rows can be traced back to examples."""
    images = (np.arange(n) % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, *shape), np.uint8)
    return images, np.arange(n, dtype=np.int64)


def _epoch(n, **kwargs):
    images, labels = _toy(n)
    return list(pipeline.epoch_batches(images, labels, **kwargs))


def test_num_batches():
    assert pipeline.num_batches(10, 4, drop_remainder=True) == 2
    assert pipeline.num_batches(10, 4, drop_remainder=False) == 3
    assert pipeline.num_batches(12, 4, drop_remainder=False) == 3
    assert pipeline.num_batches(3, 4, drop_remainder=True) == 0
    assert pipeline.num_batches(0, 4, drop_remainder=False) == 0
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        pipeline.num_batches(10, 0, drop_remainder=True)


def test_epoch_permutation_seeded_and_reshuffled_each_epoch():
    a = pipeline.epoch_permutation(1000, seed=3, epoch=0)
    assert a.dtype == np.int64 and np.array_equal(np.sort(a), np.arange(1000))
    np.testing.assert_array_equal(a, pipeline.epoch_permutation(1000, seed=3, epoch=0))
    orders = [pipeline.epoch_permutation(1000, seed=3, epoch=e) for e in range(5)]
    orders.append(pipeline.epoch_permutation(1000, seed=4, epoch=0))
    for x, y in itertools.combinations(orders, 2):
        assert np.mean(x == y) < 0.05  # different orders, not just a few swaps
    with pytest.raises(ValueError, match="seed and epoch must be >= 0"):
        pipeline.epoch_permutation(10, seed=-1, epoch=0)


def test_batches_follow_the_epoch_order():
    batches = _epoch(20, batch_size=5, seed=9, epoch=2, process_index=0, process_count=1)
    order = pipeline.epoch_permutation(20, seed=9, epoch=2)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), order)
    for b in batches:
        assert b["image"].dtype == np.uint8 and b["label"].dtype == np.int32 and b["mask"].dtype == bool
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["label"] % 256)  # images travel with labels
    unshuffled = _epoch(20, batch_size=5, seed=9, epoch=2, shuffle=False, process_index=0, process_count=1)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in unshuffled]), np.arange(20))


def test_eval_padding_mask_counts_each_example_once():
    for n, batch_size in [(10, 4), (13, 5), (7, 8), (16, 4)]:
        batches = _epoch(n, batch_size=batch_size, seed=1, epoch=0, drop_remainder=False,
                         process_index=0, process_count=1)
        assert len(batches) == -(-n // batch_size)
        assert all(b["label"].shape == (batch_size,) for b in batches)  # fixed batch size, padded
        seen = np.concatenate([b["label"][b["mask"]] for b in batches])
        np.testing.assert_array_equal(np.sort(seen), np.arange(n))
        last = batches[-1]
        padding = batch_size * len(batches) - n
        assert last["mask"].sum() == batch_size - padding and not last["mask"][batch_size - padding:].any()
        assert not last["image"][~last["mask"]].any() and not last["label"][~last["mask"]].any()


def test_train_drops_remainder():
    batches = _epoch(10, batch_size=4, seed=1, epoch=0, process_index=0, process_count=1)
    assert len(batches) == 2 and all(b["mask"].all() for b in batches)
    order = pipeline.epoch_permutation(10, seed=1, epoch=0)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), order[:8])


def test_start_batch_resumes_exactly():
    kwargs = dict(batch_size=3, seed=5, epoch=1, drop_remainder=False, process_index=0, process_count=1)
    full = _epoch(11, **kwargs)
    for start in range(len(full) + 1):
        resumed = _epoch(11, start_batch=start, **kwargs)
        assert len(resumed) == len(full) - start
        for a, b in zip(resumed, full[start:]):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(ValueError, match="start_batch 5 outside"):
        _epoch(11, start_batch=5, **kwargs)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_process_slices_reassemble_the_global_batch(drop_remainder):
    kwargs = dict(batch_size=8, seed=2, epoch=3, drop_remainder=drop_remainder)
    single = _epoch(29, process_index=0, process_count=1, **kwargs)
    per_process = [_epoch(29, process_index=p, process_count=4, **kwargs) for p in range(4)]
    assert all(len(batches) == len(single) for batches in per_process)
    for step, global_batch in enumerate(single):
        slices = [per_process[p][step] for p in range(4)]
        assert all(s["label"].shape == (2,) for s in slices)
        for key in global_batch:
            np.testing.assert_array_equal(np.concatenate([s[key] for s in slices]), global_batch[key])
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        _epoch(29, process_index=0, process_count=3, **kwargs)


def test_defaults_use_jax_process_index():
    images, labels = _toy(8)
    batches = list(pipeline.epoch_batches(images, labels, batch_size=4, seed=0, epoch=0))
    assert len(batches) == 2 and batches[0]["label"].shape == (4,)  # one process: the whole global batch


def test_bad_inputs():
    images, labels = _toy(8)
    with pytest.raises(ValueError, match="same N"):
        list(pipeline.epoch_batches(images, labels[:7], batch_size=4, seed=0, epoch=0))
    with pytest.raises(ValueError, match="process_index"):
        list(pipeline.epoch_batches(images, labels, batch_size=4, seed=0, epoch=0, process_index=2,
                                    process_count=2))


def test_put_host_batch_over_8_devices():
    assert jax.device_count() == 8, "tests/conftest.py should force 8 CPU devices"
    mesh = jax.make_mesh((8,), ("data",))
    images, labels = _toy(100, shape=(6, 6, 3))
    batch = next(pipeline.epoch_batches(images, labels, batch_size=32, seed=0, epoch=0))
    sharded = parallel.put_host_batch(batch, mesh)
    assert set(sharded) == {"image", "label", "mask"}
    for key, array in sharded.items():
        assert isinstance(array, jax.Array) and array.shape == batch[key].shape
        assert array.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("data")), array.ndim)
        shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start)
        assert len(shards) == 8 and len({s.device for s in shards}) == 8
        for i, shard in enumerate(shards):
            np.testing.assert_array_equal(np.asarray(shard.data), batch[key][4 * i:4 * (i + 1)])
        np.testing.assert_array_equal(np.asarray(array), batch[key])


def test_put_host_batch_on_a_2d_mesh_and_errors():
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    images, labels = _toy(16)
    batch = next(pipeline.epoch_batches(images, labels, batch_size=8, seed=0, epoch=0))
    sharded = parallel.put_host_batch(batch, mesh)
    assert len(sharded["label"].addressable_shards) == 8  # 4-way split, replicated over "model"
    assert {s.data.shape for s in sharded["label"].addressable_shards} == {(2,)}
    np.testing.assert_array_equal(np.asarray(sharded["image"]), batch["image"])
    with pytest.raises(ValueError, match="no axis 'batch'"):
        parallel.put_host_batch(batch, mesh, axis="batch")
    odd = next(pipeline.epoch_batches(images, labels, batch_size=6, seed=0, epoch=0))
    with pytest.raises(ValueError, match="6 rows does not split evenly over the 4 devices"):
        parallel.put_host_batch(odd, mesh)


def test_normalize_matches_numpy():
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 3, 3)).astype(np.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    expected = (images / 255.0 - np.array(mean)) / np.array(std)
    out = pipeline.normalize(images, mean, std)
    assert out.dtype == jnp.float32 and out.shape == images.shape
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
    half = pipeline.normalize(images, mean, std, dtype=jnp.bfloat16)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), expected, rtol=1e-2, atol=1e-2)
    mesh = jax.make_mesh((8,), ("data",))
    sharded = parallel.put_host_batch({"image": np.repeat(images, 8, axis=0)[:16]}, mesh)["image"]
    out = pipeline.normalize(sharded, mean, std)
    assert out.sharding.spec[0] == "data"


def _crops(image, pad):
    """Every crop-with-zero-padding of `image`, plain and mirrored: [(2 * pad + 1)^2 * 2, H, W, C]."""
    h, w, _ = image.shape
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    crops = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return np.stack(crops + [c[:, ::-1] for c in crops])


def test_augment_deterministic_and_valid_crops():
    images = np.random.default_rng(1).integers(1, 256, (64, 8, 8, 3)).astype(np.uint8)
    key = jax.random.key(42)
    out = np.asarray(pipeline.augment(key, images, pad=2))
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(pipeline.augment(key, images, pad=2)))
    assert not np.array_equal(out, np.asarray(pipeline.augment(jax.random.key(43), images, pad=2)))
    seen_offsets, flips = set(), 0
    for image, result in zip(images, out):
        candidates = _crops(image, 2)
        matches = np.flatnonzero((candidates == result).all(axis=(1, 2, 3)))
        assert matches.size >= 1, "output is not a zero-padded crop (or its mirror) of its input"
        seen_offsets.add(int(matches[0]) % 25)
        flips += int(matches[0]) >= 25
    assert len(seen_offsets) > 10 and 16 <= flips <= 48  # offsets vary; about half the images mirrored
    # Per-image randomness depends only on (key, position): a batch's prefix augments the same way.
    np.testing.assert_array_equal(np.asarray(pipeline.augment(key, images[:10], pad=2)), out[:10])


def test_augment_options_and_float_input():
    images = np.random.default_rng(2).random((6, 5, 7, 1)).astype(np.float32)
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(pipeline.augment(key, images, pad=0, flip=False)), images)
    flipped = np.asarray(pipeline.augment(key, images, pad=0, flip=True))
    for image, result in zip(images, flipped):
        assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])
    assert pipeline.augment(key, images).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        pipeline.augment(key, images[0])


def test_augment_on_sharded_batch_matches_host():
    mesh = jax.make_mesh((8,), ("data",))
    images = np.random.default_rng(3).integers(0, 256, (32, 8, 8, 3)).astype(np.uint8)
    sharded = parallel.put_host_batch({"image": images}, mesh)["image"]
    key = jax.random.key(7)
    out = pipeline.augment(key, sharded)
    assert out.sharding.spec[0] == "data"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(pipeline.augment(key, images)))
