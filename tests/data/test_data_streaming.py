"""Streaming pipeline (cnnlab.data.streaming) and host decoding (cnnlab.data.decode) on tiny in-memory JPEGs."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import decode, pipeline, streaming


def _smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 [H, W, 3] image: smooth gradients plus a little noise (JPEG-friendly, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [128 + 100 * np.sin(x / (17 + 5 * c) + c) * np.cos(y / (23 + 3 * c)) for c in range(3)]
    pixels = np.stack(channels, -1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, *, mode: str = "RGB", format: str = "JPEG") -> bytes:
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 90} if format == "JPEG" else {}))
    return buffer.getvalue()


def _source(count: int, *, seed: int = 0) -> list[dict]:
    """Records of tiny JPEGs of a few sizes; label i % 7."""
    images = [_encode(_smooth_rgb(20 + index % 9, 24 + index % 5, seed + index)) for index in range(count)]
    return streaming.in_memory_source(images, [index % 7 for index in range(count)])


class _LazySource:
    """A source whose records are made on demand: its size costs no memory, so the pipeline's memory shows."""

    def __init__(self, count: int):
        self.count = count
        self.jpeg = _encode(_smooth_rgb(24, 32))

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return {"image": self.jpeg, "label": index % 10, "file_name": f"{index}.jpg"}


# ----------------------------------------------------------------------------------------------- decode


def test_draft_decode_uses_reduced_dct_and_matches_full_decode():
    pixels = _smooth_rgb(300, 400)
    data = _encode(pixels)
    image = Image.open(io.BytesIO(data))
    assert decode._reduce_for(image, 4.5) == 4.0 and image.size == (100, 75)  # a 1/4-scale DCT decode
    full = Image.fromarray(decode.decode_rgb(data))
    # Reference: the same box resized from the full-resolution decode (no draft).
    size = 32
    extent = size * 300 / round(size * 256 / 224)
    box = ((400 - extent) / 2, (300 - extent) / 2, (400 + extent) / 2, (300 + extent) / 2)
    reference = np.asarray(full.resize((size, size), Image.Resampling.BILINEAR, box=box)).astype(int)
    drafted = decode.decode_center_crop(data, size)
    assert drafted.shape == (size, size, 3) and drafted.dtype == np.uint8
    assert np.abs(drafted.astype(int) - reference).mean() < 3.0


def test_random_crop_with_draft_matches_full_decode_of_the_same_box():
    data = _encode(_smooth_rgb(375, 500, seed=3))
    full = Image.fromarray(decode.decode_rgb(data))
    for seed in range(5):
        top, left, height, width = decode.random_resized_crop_box(375, 500, np.random.default_rng(seed))
        reference = np.asarray(full.resize((24, 24), Image.Resampling.BILINEAR,
                                           box=(left, top, left + width, top + height))).astype(int)
        cropped = decode.decode_random_crop(data, 24, np.random.default_rng(seed), flip=False)
        assert np.abs(cropped.astype(int) - reference).mean() < 4.0


@pytest.mark.parametrize("mode,format", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"), ("P", "PNG")])
def test_grey_cmyk_and_png_images_come_out_rgb(mode, format):
    pixels = _smooth_rgb(120, 160)
    data = _encode(pixels, mode=mode, format=format)
    full = decode.decode_rgb(data)
    assert full.shape == (120, 160, 3) and full.dtype == np.uint8
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    np.testing.assert_array_equal(full, reference)
    assert np.abs(full.astype(int) - pixels.astype(int)).mean() < (60 if mode in ("L", "P") else 8)
    for view in (decode.decode_center_crop(data, 16),
                 decode.decode_random_crop(data, 16, np.random.default_rng(0))):
        assert view.shape == (16, 16, 3) and view.dtype == np.uint8
    if mode == "L":  # grey stays grey: the three channels are equal
        view = decode.decode_center_crop(data, 16)
        np.testing.assert_array_equal(view[..., 0], view[..., 2])


def test_random_resized_crop_box_stays_in_the_inception_ranges():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, height, width = decode.random_resized_crop_box(375, 500, rng)
        assert 0 <= top and top + height <= 375 and 0 <= left and left + width <= 500
        assert 0.08 * 0.95 <= height * width / (375 * 500) <= 1.0
        assert 3 / 4 * 0.95 <= width / height <= 4 / 3 * 1.05
    # Nothing fits in a 1000 x 10 strip: the fallback is the centred window with the aspect ratio clamped.
    assert decode.random_resized_crop_box(10, 1000, np.random.default_rng(0)) == (0, 493, 10, 13)


def test_flip_mirrors_the_same_crop():
    data = _encode(_smooth_rgb(60, 80))
    mirrored = 0
    for seed in range(12):
        plain = decode.decode_random_crop(data, 16, np.random.default_rng(seed), flip=False)
        maybe = decode.decode_random_crop(data, 16, np.random.default_rng(seed), flip=True)
        if not np.array_equal(plain, maybe):
            np.testing.assert_array_equal(maybe, plain[:, ::-1])
            mirrored += 1
    assert 0 < mirrored < 12


def test_bad_bytes_give_a_clear_error_naming_the_example():
    with pytest.raises(ValueError, match="JPEG or PNG"):
        decode.decode_rgb(b"not an image")
    source = _source(8)
    source[5] = {"image": b"garbage", "label": 0, "file_name": "broken.jpg"}
    with pytest.raises(ValueError, match=r"example 5 \(broken.jpg\)"):
        list(streaming.eval_batches(source, global_batch_size=4, image_size=8, process_index=0, process_count=1))


# -------------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("process_count,drop", [(1, True), (2, True), (4, False)])
def test_epoch_rows_are_the_in_memory_pipelines_rows(process_count, drop):
    examples = np.arange(50)
    for process_index in range(process_count):
        rows = streaming.epoch_rows(50, global_batch_size=8, seed=3, epoch=2, shuffle=True, drop_remainder=drop,
                                    process_index=process_index, process_count=process_count)
        expected = list(pipeline.epoch_batches(examples, examples, batch_size=8, seed=3, epoch=2,
                                               drop_remainder=drop, process_index=process_index,
                                               process_count=process_count))
        assert rows.shape == (len(expected), 8 // process_count)
        for row, batch in zip(rows, expected):
            np.testing.assert_array_equal(row >= 0, batch["mask"])
            np.testing.assert_array_equal(row[row >= 0], batch["image"][batch["mask"]])


def _collect(iterator):
    batches = list(iterator)
    iterator.close()
    return batches


def test_train_batches_shape_determinism_and_epochs():
    source = _source(40)
    kwargs = dict(global_batch_size=8, seed=5, image_size=12, process_index=0, process_count=1)
    first = _collect(streaming.train_batches(source, epoch=0, **kwargs))
    assert len(first) == streaming.num_train_batches(source, 8) == 5
    for batch in first:
        assert batch["image"].shape == (8, 12, 12, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool and batch["mask"].all()
    again = _collect(streaming.train_batches(source, epoch=0, **kwargs))
    for one, two in zip(first, again):
        for key in one:
            np.testing.assert_array_equal(one[key], two[key])
    order = streaming.epoch_rows(40, global_batch_size=8, seed=5, epoch=0, shuffle=True, drop_remainder=True,
                                 process_index=0, process_count=1)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in first]), order.ravel() % 7)
    other = streaming.epoch_rows(40, global_batch_size=8, seed=5, epoch=1, shuffle=True, drop_remainder=True,
                                 process_index=0, process_count=1)
    assert not np.array_equal(order, other)  # a different order each epoch


def test_each_process_reads_its_rows_and_the_views_do_not_depend_on_the_process_count():
    source = _source(33)
    kwargs = dict(global_batch_size=8, seed=1, epoch=3, image_size=10)
    whole = _collect(streaming.train_batches(source, process_index=0, process_count=1, **kwargs))
    halves = [_collect(streaming.train_batches(source, process_index=p, process_count=2, **kwargs))
              for p in range(2)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 4
    for batch, zero, one in zip(whole, *halves):
        for key in ("image", "label"):
            np.testing.assert_array_equal(batch[key], np.concatenate([zero[key], one[key]]))


def test_restarting_at_start_batch_gives_the_same_batches():
    source = _source(48)
    kwargs = dict(global_batch_size=6, seed=9, epoch=4, image_size=10, process_index=1, process_count=2)
    uninterrupted = _collect(streaming.train_batches(source, **kwargs))
    resumed = _collect(streaming.train_batches(source, start_batch=5, **kwargs))
    assert len(resumed) == len(uninterrupted) - 5
    for one, two in zip(uninterrupted[5:], resumed):
        np.testing.assert_array_equal(one["image"], two["image"])
        np.testing.assert_array_equal(one["label"], two["label"])
    with pytest.raises(ValueError, match="start_batch"):
        streaming.train_batches(source, start_batch=99, **kwargs)


def test_grain_iterator_state_restores_the_position():
    source = _source(30)
    kwargs = dict(global_batch_size=4, seed=2, epoch=0, image_size=8, process_index=0, process_count=1)
    iterator = streaming.train_batches(source, **kwargs)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    expected = next(iterator)
    iterator.close()
    fresh = streaming.train_batches(source, **kwargs)
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["image"], expected["image"])
    fresh.close()


def test_worker_processes_give_the_same_batches_and_state():
    source = _source(24)
    kwargs = dict(global_batch_size=4, seed=7, epoch=1, image_size=8, process_index=0, process_count=1)
    in_process = _collect(streaming.train_batches(source, **kwargs))
    workers = streaming.train_batches(source, worker_count=2, **kwargs)
    for expected in in_process[:2]:
        np.testing.assert_array_equal(next(workers)["image"], expected["image"])
    state = workers.get_state()
    workers.close()
    restored = streaming.train_batches(source, worker_count=2, **kwargs)
    restored.set_state(state)
    rest = _collect(restored)
    assert len(rest) == len(in_process) - 2
    for one, two in zip(in_process[2:], rest):
        np.testing.assert_array_equal(one["image"], two["image"])
        np.testing.assert_array_equal(one["label"], two["label"])


def test_reader_threads_give_the_same_batches_in_order():
    source = _source(40)
    kwargs = dict(global_batch_size=4, seed=3, epoch=2, image_size=8, process_index=0, process_count=1)
    one = _collect(streaming.train_batches(source, prefetch_batches=0, **kwargs))
    three = _collect(streaming.train_batches(source, read_threads=3, **kwargs))
    assert len(one) == len(three) == 10
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="read_threads"):
        streaming.train_batches(source, read_threads=0, **kwargs)


def test_eval_batches_count_every_example_once_in_order():
    source = _source(23)
    batches = [_collect(streaming.eval_batches(source, global_batch_size=8, image_size=12, process_index=p,
                                               process_count=2)) for p in range(2)]
    assert len(batches[0]) == len(batches[1]) == streaming.num_eval_batches(source, 8) == 3
    seen = []
    for zero, one in zip(*batches):
        mask = np.concatenate([zero["mask"], one["mask"]])
        images = np.concatenate([zero["image"], one["image"]])
        labels = np.concatenate([zero["label"], one["label"]])
        for row in np.flatnonzero(mask):
            index = len(seen)
            np.testing.assert_array_equal(images[row], decode.decode_center_crop(source[index]["image"], 12))
            assert labels[row] == source[index]["label"]
            seen.append(index)
        assert not images[~mask].any() and not labels[~mask].any()
    assert seen == list(range(23))


def test_bad_arguments_are_refused():
    source = _source(8)
    with pytest.raises(ValueError, match="multiple of the process count"):
        streaming.train_batches(source, global_batch_size=5, seed=0, epoch=0, image_size=8, process_index=0,
                                process_count=2)
    with pytest.raises(ValueError, match="empty"):
        streaming.train_batches([], global_batch_size=4, seed=0, epoch=0, image_size=8, process_index=0,
                                process_count=1)
    with pytest.raises(ValueError, match="process_index"):
        streaming.eval_batches(source, global_batch_size=4, image_size=8, process_index=2, process_count=2)


def test_host_memory_does_not_grow_with_the_dataset():
    def peak_bytes(count):
        tracemalloc.start()
        try:
            iterator = streaming.train_batches(_LazySource(count), global_batch_size=100, seed=0, epoch=0,
                                               image_size=32, process_index=0, process_count=1)
            next(iterator)
            time.sleep(1.0)  # a consumer slower than the producer: unbounded buffers would fill now
            for batch in iterator:
                assert batch["image"].shape == (100, 32, 32, 3)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak_bytes(100)  # first-use allocations (imports, caches) out of the way
    small, large = peak_bytes(500), peak_bytes(4000)
    # One batch is 307 KB and 4000 decoded views 12 MB; the pipeline holds a few batches (prefetch_batches=2 plus
    # the one being built and the one being read) and 16 bytes per example of order. grain's default buffer of
    # 500 elements would hold all 40 batches (measured: +4.4 MB from 500 to 4000 examples, against +0.3 MB).
    assert large - small < 1_500_000, (small, large)
