"""TensorBoard event files written without TensorFlow: byte format, checksums, round trip, torn files, interop."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from cnnlab.report import tensorboard as tb


def test_crc32c_standard_test_vector_and_mask():
    assert tb.crc32c(b"123456789") == 0xE3069283
    assert tb.crc32c(b"") == 0
    # Masked by hand: 0xE3069283 rotated right by 15 is 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5 (mod 2^32).
    assert tb.masked_crc32c(b"123456789") == 0xC78AB0E5


def test_varints():
    assert tb.encode_varint(0) == b"\x00"
    assert tb.encode_varint(1) == b"\x01"
    assert tb.encode_varint(127) == b"\x7f"
    assert tb.encode_varint(128) == b"\x80\x01"
    assert tb.encode_varint(300) == b"\xac\x02"
    assert tb.encode_varint(-1) == b"\xff" * 9 + b"\x01"  # int64 -1: ten bytes of two's complement
    with pytest.raises(ValueError, match="64-bit"):
        tb.encode_varint(2**64)


def test_scalar_event_bytes_built_by_hand():
    expected = (
        b"\x09" + b"\x00\x00\x00\x00\x00\x00\xf8\x3f"  # field 1 (wall_time), fixed64: the double 1.5
        + b"\x10" + b"\xac\x02"  # field 2 (step), varint: 300
        + b"\x2a\x0a"  # field 5 (summary), length-delimited, 10 bytes:
        + b"\x0a\x08"  # Summary field 1 (value), 8 bytes:
        + b"\x0a\x01a"  # Value field 1 (tag), "a"
        + b"\x15" + b"\x00\x00\x00\x3f"  # Value field 2 (simple_value), fixed32: the float 0.5
    )
    assert tb.scalar_event(1.5, 300, "a", 0.5) == expected


def test_file_version_event_bytes_built_by_hand():
    expected = (b"\x09" + b"\x00\x00\x00\x00\x00\x00\xf8\x3f"  # wall_time 1.5
                + b"\x1a\x0dbrain.Event:2"  # field 3 (file_version), 13 bytes
                + b"\x52\x08" + b"\x0a\x06cnnlab")  # field 10 (source_metadata) = {writer (field 1): "cnnlab"}
    assert tb.file_version_event(1.5) == expected


def test_tfrecord_framing():
    record = tb.tfrecord(b"123456789")
    assert record[:8] == b"\x09\x00\x00\x00\x00\x00\x00\x00"  # length 9, uint64 little-endian
    assert record[8:12] == struct.pack("<I", tb.masked_crc32c(record[:8]))
    assert record[12:21] == b"123456789"
    assert record[21:] == struct.pack("<I", 0xC78AB0E5)
    assert len(record) == 8 + 4 + 9 + 4


def test_round_trip_and_file_name(tmp_path):
    with tb.EventWriter(tmp_path / "run") as writer:
        writer.add_scalars(0, {"train/loss": 2.3, "learning_rate": 0.1}, wall_time=1000.0)
        writer.add_scalars(100, {"train/loss": 0.4}, wall_time=1010.0)
        writer.add_scalars(2**40, {"eval/accuracy": np.float32(0.91)})
        writer.add_scalars(np.int64(-5), {"x": 1})
    name = os.path.basename(writer.path)
    assert name.startswith("events.out.tfevents.") and "tfevents" in name
    assert name.split(".")[-2] == str(os.getpid())
    got = tb.read_scalars(writer.path)
    assert [(s, t) for s, t, _ in got] == [(0, "train/loss"), (0, "learning_rate"), (100, "train/loss"),
                                           (2**40, "eval/accuracy"), (-5, "x")]
    np.testing.assert_array_equal([v for _, _, v in got], np.float32([2.3, 0.1, 0.4, 0.91, 1.0]))
    # The first record is the file-version event.
    first = tb.read_records(writer.path)[0]
    assert b"brain.Event:2" in first


def test_two_writers_in_one_second_get_two_files(tmp_path):
    with tb.EventWriter(tmp_path) as a, tb.EventWriter(tmp_path) as b:
        a.add_scalars(1, {"a": 1.0})
        b.add_scalars(1, {"b": 2.0})
    assert a.path != b.path
    assert tb.read_scalars(a.path) == [(1, "a", 1.0)] and tb.read_scalars(b.path) == [(1, "b", 2.0)]


def test_torn_last_record_is_ignored_and_corruption_is_reported(tmp_path):
    with tb.EventWriter(tmp_path) as writer:
        for step in range(3):
            writer.add_scalars(step, {"loss": float(step)})
    contents = open(writer.path, "rb").read()
    whole = tb.read_scalars(writer.path)
    assert whole == [(0, "loss", 0.0), (1, "loss", 1.0), (2, "loss", 2.0)]
    last_record = len(tb.tfrecord(tb.scalar_event(0.0, 2, "loss", 2.0)))
    for cut in (1, 4, 10, last_record - 12, last_record - 1):  # inside the data CRC, the data, the length header
        torn = tmp_path / f"torn{cut}.tfevents"
        torn.write_bytes(contents[:-cut])
        assert tb.read_scalars(torn) == whole[:2], cut
    corrupt = bytearray(contents)
    corrupt[-8] ^= 0x01  # a bit inside the last record's data
    (tmp_path / "corrupt").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="data checksum mismatch"):
        tb.read_scalars(tmp_path / "corrupt")
    corrupt = bytearray(contents)
    corrupt[0] ^= 0x01  # the first record's length
    (tmp_path / "corrupt_length").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="length checksum mismatch"):
        tb.read_scalars(tmp_path / "corrupt_length")


def test_killed_writer_leaves_a_readable_file(tmp_path):
    # os._exit skips every Python-level flush and close: only what add_scalars flushed itself reaches the file.
    script = (
        "import os, sys\n"
        "from cnnlab.report.tensorboard import EventWriter\n"
        "writer = EventWriter(sys.argv[1])\n"
        "for step in range(5):\n"
        "    writer.add_scalars(step, {'train/loss': 1.0 / (step + 1)})\n"
        "print(writer.path, flush=True)\n"
        "os._exit(0)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, check=True)
    path = result.stdout.strip()
    assert [s for s, _, _ in tb.read_scalars(path)] == [0, 1, 2, 3, 4]


def test_writer_bad_input(tmp_path):
    with tb.EventWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="step must be an int"):
            writer.add_scalars(1.5, {"a": 1.0})
        with pytest.raises(ValueError, match="must be a number"):
            writer.add_scalars(1, {"a": "high"})
        with pytest.raises(ValueError, match="non-empty strings"):
            writer.add_scalars(1, {"": 1.0})
        with pytest.raises(ValueError, match="mapping"):
            writer.add_scalars(1, [("a", 1.0)])
        with pytest.raises(ValueError, match="must be a number"):
            writer.add_scalars(2, {"ok": 1.0, "bad": None})
    # Nothing of a rejected call was written, not even its valid scalars.
    assert tb.read_scalars(writer.path) == []
    with pytest.raises(ValueError, match="closed"):
        writer.add_scalars(3, {"a": 1.0})


def test_tag_for_metric():
    assert tb.tag_for_metric("train_loss") == "train/loss"
    assert tb.tag_for_metric("eval_top5_accuracy") == "eval/top5_accuracy"
    assert tb.tag_for_metric("learning_rate") == "learning_rate"
    assert tb.tag_for_metric("images_per_s") == "images_per_s"
    assert tb.tag_for_metric("training_time") == "training_time"  # no "train_" prefix
    assert tb.tag_for_metric("train_") == "train_"


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_write_scalars_from_metrics(tmp_path):
    records = [
        {"step": 100, "train_loss": 1.0, "train_accuracy": 0.5, "learning_rate": 0.1, "elapsed_s": 10.0},
        {"step": 200, "train_loss": 0.8, "train_accuracy": 0.6, "learning_rate": 0.1, "elapsed_s": 20.0},
        {"step": 200, "epoch": 1, "eval_accuracy": 0.7, "eval_top5_accuracy": 0.97},
        # Resumed from the checkpoint at step 100: step 200 is logged again, and the new values win.
        {"step": 200, "train_loss": 0.7, "train_accuracy": 0.65, "learning_rate": 0.1, "elapsed_s": 21.0},
        {"step": 150, "train_loss": 0.9, "train_accuracy": 0.55, "learning_rate": 0.1, "elapsed_s": 15.0},
        {"step": 300, "train_loss": 0.5, "train_accuracy": 0.75, "learning_rate": 0.05, "images_per_s": 900.0,
         "elapsed_s": 30.0, "healthy": True},
    ]
    metrics = write_metrics(tmp_path / "metrics.jsonl", records)
    logdir = tmp_path / "runs" / "lenet5"
    first = tb.write_scalars_from_metrics(metrics, logdir)
    foreign = logdir / "events.out.tfevents.1700000000.otherhost.1.0"  # another program's file: must stay
    foreign.write_bytes(tb.tfrecord(b"\x1a\x0dbrain.Event:2"))
    path = tb.write_scalars_from_metrics(metrics, logdir)
    assert sorted(os.listdir(logdir)) == sorted([os.path.basename(path), foreign.name])
    assert first != path and not os.path.exists(first)  # the earlier cnnlab file is gone

    got = tb.read_scalars(path)
    steps = [s for s, _, _ in got]
    assert steps == sorted(steps)
    by_tag = {}
    for step, tag, value in got:
        assert (step, tag) not in by_tag, "a (step, tag) written twice"
        by_tag[(step, tag)] = value
    assert by_tag[(200, "train/loss")] == np.float32(0.7)
    assert by_tag[(200, "eval/accuracy")] == np.float32(0.7)
    assert by_tag[(200, "eval/top5_accuracy")] == np.float32(0.97)
    assert by_tag[(200, "epoch")] == 1.0
    assert by_tag[(300, "images_per_s")] == 900.0
    assert {tag for _, tag in by_tag} == {"train/loss", "train/accuracy", "learning_rate", "elapsed_s", "epoch",
                                          "eval/accuracy", "eval/top5_accuracy", "images_per_s"}
    assert [s for s, t, _ in got if t == "train/loss"] == [100, 150, 200, 300]


def test_write_scalars_from_metrics_wall_times(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 1, "train_loss": 1.0, "elapsed_s": 5.0},
        {"step": 1, "eval_accuracy": 0.5},
        {"step": 2, "train_loss": 0.5, "elapsed_s": 65.0},
        {"step": 3, "train_loss": 0.4, "wall_time": 1.7e9},
    ])
    path = tb.write_scalars_from_metrics(metrics, tmp_path / "logs")
    wall_times = []
    for data in tb.read_records(path)[1:]:
        (field, wire, value), *_ = tb.parse_fields(data)
        assert (field, wire) == (1, 1)
        wall_times.append(struct.unpack("<d", value)[0])
    # One event per scalar: train_loss@1, elapsed_s@1, eval_accuracy@1, train_loss@2, elapsed_s@2, train_loss@3.
    assert len(wall_times) == 6
    assert wall_times[0] == wall_times[1] == wall_times[2]  # the eval record reuses its train record's time
    assert wall_times[3] - wall_times[0] == pytest.approx(60.0)
    assert wall_times[5] == 1.7e9


def test_write_scalars_from_metrics_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="No metrics file"):
        tb.write_scalars_from_metrics(tmp_path / "missing.jsonl", tmp_path / "logs")


def test_tensorboard_reads_our_file(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (pip install tensorboard) so the interop check cannot run")
    metrics = write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 100, "train_loss": 1.25, "learning_rate": 0.1},
        {"step": 200, "train_loss": 0.5, "learning_rate": 0.05},
        {"step": 200, "eval_accuracy": 0.875},
    ])
    path = tb.write_scalars_from_metrics(metrics, tmp_path / "logs")
    accumulator = event_accumulator.EventAccumulator(path)
    accumulator.Reload()
    assert accumulator.file_version == 2.0
    assert sorted(accumulator.Tags()["scalars"]) == ["eval/accuracy", "learning_rate", "train/loss"]
    assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [(100, 1.25), (200, 0.5)]
    assert [(e.step, e.value) for e in accumulator.Scalars("eval/accuracy")] == [(200, 0.875)]
    assert [e.step for e in accumulator.Scalars("learning_rate")] == [100, 200]
