"""Scalar summaries as TensorBoard event files, written without TensorFlow (``tensorboard --logdir runs/``).

An event file is a TFRecord stream. Each record is

    uint64 little-endian length | uint32 masked CRC-32C of those 8 bytes | data | uint32 masked CRC-32C of data

and each record's data is one serialized ``tensorboard.Event`` protocol buffer. The fields used here:

    Event   {double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
             SourceMetadata source_metadata = 10}
    Summary {repeated Value value = 1}
    Value   {string tag = 1; float simple_value = 2}
    SourceMetadata {string writer = 1}

The first record of a file is ``Event{wall_time, file_version="brain.Event:2", source_metadata{writer="cnnlab"}}``
(the writer name is how ``write_scalars_from_metrics`` recognises, and only deletes, event files cnnlab wrote);
then one ``Event{wall_time, step, summary{value{tag, simple_value}}}`` per scalar. The protobuf wire format and
CRC-32C are a few functions each, so neither TensorFlow nor the protobuf package is needed.

The values are stored as float32 (``simple_value`` is a ``float``), so they come back rounded to float32.
"""

from __future__ import annotations

import glob
import itertools
import operator
import os
import socket
import struct
import time
from collections.abc import Mapping

from cnnlab.report.curves import latest_records, read_metrics

FILE_VERSION = "brain.Event:2"
WRITER_NAME = "cnnlab"
_FILE_PREFIX = "events.out.tfevents."
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# A per-process counter in the file name: two writers opened in the same second by one process get two files.
_file_counter = itertools.count()

# ------------------------------------------------------------------------------------------------ CRC-32C


def _crc32c_table() -> tuple[int, ...]:
    polynomial = 0x82F63B78  # Castagnoli's polynomial 0x1EDC6F41, bit-reversed (the CRC is computed LSB first)
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ polynomial if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as an unsigned 32-bit int; ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C rotated right by 15 bits plus 0xa282ead8, modulo 2^32.

    The mask keeps a CRC stored next to the bytes it covers from being a valid CRC of data containing it.
    """
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord: length (uint64 LE), its masked CRC, the data, the data's masked CRC (uint32 LE each)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# -------------------------------------------------------------------------------------- protobuf encoding

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def encode_varint(value: int) -> bytes:
    """Base-128 varint, 7 bits a byte, least significant group first; negative int64 as 10-byte two's complement.

    ``encode_varint(300) == b"\\xac\\x02"``.
    """
    if not _INT64_MIN <= value < 2**64:
        raise ValueError(f"{value} does not fit a 64-bit varint.")
    value &= 0xFFFFFFFFFFFFFFFF  # int64 -1 is sent as uint64 2^64 - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field_number: int, wire_type: int) -> bytes:
    return encode_varint((field_number << 3) | wire_type)


def _int64_field(field_number: int, value: int) -> bytes:
    return _key(field_number, _VARINT) + encode_varint(value)


def _double_field(field_number: int, value: float) -> bytes:
    return _key(field_number, _FIXED64) + struct.pack("<d", value)


def _float_field(field_number: int, value: float) -> bytes:
    return _key(field_number, _FIXED32) + struct.pack("<f", value)


def _bytes_field(field_number: int, value: bytes) -> bytes:
    return _key(field_number, _LENGTH_DELIMITED) + encode_varint(len(value)) + value


def file_version_event(wall_time: float) -> bytes:
    """Serialized ``Event{wall_time, file_version="brain.Event:2", source_metadata{writer="cnnlab"}}``."""
    return (_double_field(1, wall_time) + _bytes_field(3, FILE_VERSION.encode())
            + _bytes_field(10, _bytes_field(1, WRITER_NAME.encode())))


def scalar_event(wall_time: float, step: int, tag: str, value: float) -> bytes:
    """Serialized ``Event{wall_time, step, summary{value{tag, simple_value}}}``."""
    summary_value = _bytes_field(1, tag.encode("utf-8")) + _float_field(2, value)
    summary = _bytes_field(1, summary_value)
    return _double_field(1, wall_time) + _int64_field(2, step) + _bytes_field(5, summary)


# -------------------------------------------------------------------------------------- protobuf decoding


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def parse_fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Splits a serialized message into ``(field_number, wire_type, value)``: ints for varints, raw bytes else."""
    fields = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field_number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type in (_FIXED64, _FIXED32):
            width = 8 if wire_type == _FIXED64 else 4
            value, pos = data[pos:pos + width], pos + width
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} (field {field_number})")
        if pos > len(data):
            raise ValueError(f"field {field_number} runs past the end of the message")
        fields.append((field_number, wire_type, value))
    return fields


def _signed64(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


# ----------------------------------------------------------------------------------------- writing


def _check_scalar(tag, value) -> float:
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"Scalar tags must be non-empty strings, got {tag!r}.")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:  # numpy and jax scalars
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"Scalar {tag!r} must be a number, got {type(value).__name__} {value!r}.") from None
    return float(value)


class EventWriter:
    """Appends scalar summaries to a new TensorBoard event file in ``logdir``.

    Every ``add_scalars`` call is flushed to the operating system before it returns, so a killed run leaves a
    file TensorBoard (and ``read_scalars``) can read up to the last complete record. Use as a context manager
    or call ``close()``.
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = os.fspath(logdir)
        os.makedirs(self.logdir, exist_ok=True)
        now = time.time()
        name = f"{_FILE_PREFIX}{int(now)}.{socket.gethostname()}.{os.getpid()}.{next(_file_counter)}"
        self.path = os.path.join(self.logdir, name)
        self._file = open(self.path, "xb")  # "x": never append to (or clobber) another writer's file
        self._file.write(tfrecord(file_version_event(now)))
        self._file.flush()

    def add_scalars(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        """Writes one event per scalar at ``step`` (an int); ``wall_time`` in seconds since the epoch (now if None)."""
        if self._file is None:
            raise ValueError(f"EventWriter for {self.path!r} is closed; open a new one to write more.")
        if isinstance(step, bool) or not hasattr(step, "__index__"):
            raise ValueError(f"step must be an int, got {type(step).__name__} {step!r}.")
        step = operator.index(step)
        if not _INT64_MIN <= step <= _INT64_MAX:
            raise ValueError(f"step {step} does not fit an int64.")
        if not isinstance(scalars, Mapping):
            raise ValueError(f"scalars must be a mapping tag -> number, got {type(scalars).__name__}.")
        wall_time = time.time() if wall_time is None else float(wall_time)
        records = b"".join(tfrecord(scalar_event(wall_time, step, tag, _check_scalar(tag, value)))
                           for tag, value in scalars.items())  # all checked before anything is written
        self._file.write(records)
        self._file.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def tag_for_metric(key: str) -> str:
    """TensorBoard tag of a metrics.jsonl key: ``train_loss`` -> ``train/loss``, ``eval_top5_accuracy`` ->
    ``eval/top5_accuracy``, anything else unchanged (``learning_rate``, ``images_per_s``)."""
    for prefix in ("train", "eval"):
        if key.startswith(prefix + "_") and len(key) > len(prefix) + 1:
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return key


def _is_cnnlab_event_file(path: str) -> bool:
    """Whether ``path``'s first record is the file-version event this module writes (writer "cnnlab")."""
    try:
        with open(path, "rb") as f:
            header = f.read(12)
            if len(header) < 12:
                return False
            (length,) = struct.unpack("<Q", header[:8])
            if length > 4096:
                return False
            data = f.read(length)
    except OSError:
        return False
    try:
        for field_number, _, value in parse_fields(data):
            if field_number == 10 and isinstance(value, bytes):
                return any(n == 1 and v == WRITER_NAME.encode() for n, _, v in parse_fields(value))
    except ValueError:
        return False
    return False


def write_scalars_from_metrics(metrics_jsonl_path: str | os.PathLike, logdir: str | os.PathLike) -> str:
    """(Re)writes the event file of ``logdir`` from a run's ``metrics.jsonl``; returns the new file's path.

    Event files cnnlab wrote earlier in ``logdir`` are deleted first (files of other writers are left alone), so
    after a resumed run TensorBoard shows exactly what ``metrics.jsonl`` holds. As in the curves, a (step,
    key) logged twice keeps its last value and points are written in step order. Every scalar field except
    ``step`` becomes a tag (see ``tag_for_metric``); non-finite values are kept (TensorBoard shows NaN).
    Wall times come from a record's ``"wall_time"`` (seconds since the epoch) or ``"elapsed_s"`` (seconds since
    the run started, the run being placed to end now); a record with neither reuses the previous record's.
    """
    records = latest_records(read_metrics(metrics_jsonl_path))
    logdir = os.fspath(logdir)
    os.makedirs(logdir, exist_ok=True)
    for old in glob.glob(os.path.join(glob.escape(logdir), f"{_FILE_PREFIX}*")):
        if os.path.isfile(old) and _is_cnnlab_event_file(old):
            os.remove(old)
    # TensorBoard's "relative" time axis needs each point's wall time. Records carry "wall_time" (seconds since
    # the epoch) or "elapsed_s" (since the run started); with only the latter, the run is placed to end now.
    elapsed = [r["elapsed_s"] for r in records if _is_number(r.get("elapsed_s"))]
    run_start = time.time() - (max(elapsed) if elapsed else 0.0)
    wall_time = run_start
    with EventWriter(logdir) as writer:
        for record in records:
            if _is_number(record.get("wall_time")):
                wall_time = float(record["wall_time"])
            elif _is_number(record.get("elapsed_s")):
                wall_time = run_start + float(record["elapsed_s"])
            # else: an eval record without times keeps the time of the record before it
            scalars = {tag_for_metric(k): v for k, v in record.items()
                       if k not in ("step", "wall_time") and _is_number(v)}
            writer.add_scalars(int(record["step"]), scalars, wall_time=wall_time)
    return writer.path


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------- reading


def read_records(path: str | os.PathLike) -> list[bytes]:
    """The data of every complete TFRecord in ``path``, both CRCs verified.

    A torn last record (the file ends inside it, as when a run is killed mid-write) is ignored; a checksum that
    does not match raises ValueError naming the record's offset.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        contents = f.read()
    records = []
    pos = 0
    while pos < len(contents):
        if len(contents) - pos < 12:
            break  # torn inside the length header
        length_bytes = contents[pos:pos + 8]
        (length_crc,) = struct.unpack("<I", contents[pos + 8:pos + 12])
        if masked_crc32c(length_bytes) != length_crc:
            raise ValueError(f"{path}: length checksum mismatch in the record at byte {pos}; the file is corrupt.")
        (length,) = struct.unpack("<Q", length_bytes)
        end = pos + 12 + length + 4
        if end > len(contents):
            break  # torn inside the data or its checksum
        data = contents[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", contents[end - 4:end])
        if masked_crc32c(data) != data_crc:
            raise ValueError(f"{path}: data checksum mismatch in the record at byte {pos}; the file is corrupt.")
        records.append(data)
        pos = end
    return records


def read_scalars(path: str | os.PathLike) -> list[tuple[int, str, float]]:
    """The scalars of one event file as ``(step, tag, value)`` in file order (values rounded to float32).

    Verifies both checksums of every record; tolerates a torn last record (see ``read_records``).
    """
    scalars = []
    for data in read_records(path):
        step = 0
        values = []
        for field_number, wire_type, value in parse_fields(data):
            if field_number == 2 and wire_type == _VARINT:
                step = _signed64(value)
            elif field_number == 5 and wire_type == _LENGTH_DELIMITED:
                for n, _, summary_value in parse_fields(value):
                    if n != 1:
                        continue
                    tag, simple_value = None, None
                    for vn, vw, v in parse_fields(summary_value):
                        if vn == 1 and vw == _LENGTH_DELIMITED:
                            tag = v.decode("utf-8")
                        elif vn == 2 and vw == _FIXED32:
                            (simple_value,) = struct.unpack("<f", v)
                    if tag is not None and simple_value is not None:
                        values.append((tag, simple_value))
        scalars.extend((step, tag, value) for tag, value in values)
    return scalars
