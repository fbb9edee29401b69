"""names(), load(), info(), prepare(), status(): cnnlab's datasets as numpy arrays, through TFDS.

Prepared data lives in TFDS's data_dir (argument, else $TFDS_DATA_DIR, else ~/tensorflow_datasets) as
ArrayRecord written by the builders in :mod:`cnnlab.data.builders`; reading it needs neither TensorFlow
nor a network. Split strings follow TFDS's slicing syntax ("train", "test[:1000]", "train[90%:]",
"train[:50%]+test"); percentages round to the closest example as in TFDS.

Messages: `prepare` logs (logger "cnnlab.data", INFO) one line naming the files it reads and one line with
the split sizes, time and folder; TFDS's own INFO logs and progress bars are silenced during cnnlab's
calls into TFDS (they describe downloads that do not happen); its warnings and errors still show.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils
from tensorflow_datasets.proto import tf_example_pb2

from cnnlab.data import builders, formats, images

log = logging.getLogger("cnnlab.data")
_READ_CHUNK = 16384  # records deserialised per ArrayRecord bulk read
_TFDS_SOURCE_DIR = os.path.dirname(tfds.__file__)


class _DropTfdsInfo(logging.Filter):
    """Drops TFDS's own records below WARNING ("Load dataset info from ...", "Generating dataset ...").

    TFDS logs through absl, i.e. the Python logger "absl", which other code shares: only records whose
    source file lies inside the tensorflow_datasets package are dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(_TFDS_SOURCE_DIR)


_TFDS_FILTER = _DropTfdsInfo()
_quiet_depth = 0  # nesting depth of _quiet_tfds (load -> prepare)
_quiet_guard = threading.Lock()
_bars_were_on = True  # TFDS's progress-bar setting when the outermost _quiet_tfds began


@contextlib.contextmanager
def _quiet_tfds():
    """Within: TFDS's INFO logs dropped and its progress bars off; restored on exit. Nests (load calls
    prepare); usable as a decorator."""
    global _quiet_depth, _bars_were_on
    with _quiet_guard:
        _quiet_depth += 1
        if _quiet_depth == 1:
            logging.getLogger("absl").addFilter(_TFDS_FILTER)
            # tqdm_utils._active is the flag tfds.display_progress_bar sets; read to restore it afterwards.
            _bars_were_on = getattr(tqdm_utils, "_active", True)
            tfds.display_progress_bar(False)
    try:
        yield
    finally:
        with _quiet_guard:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                logging.getLogger("absl").removeFilter(_TFDS_FILTER)
                tfds.display_progress_bar(_bars_were_on)


@dataclasses.dataclass
class Dataset:
    """One (sliced) split as host arrays.

    images: uint8 [N, H, W, C]; labels: int32 [N] in [0, num_classes); class_names: num_classes names.
    extra_labels / extra_class_names: other labelings (CIFAR-100: "coarse_label", int32 [N], 20 names).
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    extra_labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    extra_class_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: shapes, classes, split sizes, train-split pixel statistics.

    mean, std: per-channel tuples in [0, 1] pixel units (population statistics of the train split);
    stats_source says whether they were computed from the prepared data or are published values.
    split_sizes: from the prepared data when prepared, else the official sizes.
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: list[str]
    split_sizes: dict[str, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stats_source: str
    prepared: bool
    path: str | None  # the prepared dataset's directory, None if not prepared
    extra_class_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def _train_first(sizes: dict[str, int]) -> dict[str, int]:
    return dict(sorted(sizes.items(), key=lambda item: (item[0] != "train", item[0] != "test", item[0])))


def names() -> list[str]:
    """The dataset names cnnlab knows, sorted."""
    return sorted(builders.SPECS)


def _spec(name: str) -> builders.DatasetSpec:
    if name not in builders.SPECS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(names())} (in memory), "
                         f"imagenet2012 and image folders prepared with `python -m cnnlab.data prepare "
                         f"image_folder --name=NAME --root=DIR` (streamed)")
    return builders.SPECS[name]


def _data_dir(data_dir) -> Path:
    return (Path(data_dir).expanduser() if data_dir else builders.default_data_dir()).absolute()


def _manual_dir(manual_dir, data_dir: Path) -> Path:
    return (Path(manual_dir).expanduser() if manual_dir else builders.default_manual_dir(data_dir)).absolute()


def _builder(name: str, data_dir: Path) -> builders.CnnlabBuilder:
    return builders.BUILDERS[name](data_dir=os.fspath(data_dir), file_format="array_record")


def _is_prepared(builder: builders.CnnlabBuilder) -> bool:
    # TFDS's own is_prepared() logs a warning for every unprepared dataset; this is the same test, quietly.
    return (Path(builder.data_path) / "dataset_info.json").is_file()


def _install_hint(spec: builders.DatasetSpec, manual: Path) -> str:
    return builders.install_hint(spec.name, manual)


def _absolute_ranges(name: str, split: str, sizes: dict[str, int]) -> list[tuple[str, int, int]]:
    """TFDS split spec -> [(base split, start, stop)], with errors that list the valid splits."""
    if not isinstance(split, str):
        raise TypeError(f"split must be a string such as 'train' or 'train[:90%]', got {type(split).__name__}")
    infos = {s: types.SimpleNamespace(num_examples=n, shard_lengths=[n]) for s, n in sizes.items()}
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    except (ValueError, NotImplementedError) as e:
        raise ValueError(f"invalid split {split!r} for dataset {name!r}: valid splits are "
                         f"{', '.join(sorted(sizes))}, optionally sliced as in TFDS ('train[:90%]', "
                         f"'train[90%:]', 'test[:1000]'); {e}") from None
    # TFDS encodes "from the start" / "to the end" as None.
    return [(i.splitname, i.from_ or 0, sizes[i.splitname] if i.to is None else i.to) for i in instructions]


@contextlib.contextmanager
def _lock(data_dir: Path, name: str):
    """An exclusive lock per (data_dir, dataset) so concurrent processes don't prepare twice."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f".cnnlab_{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _staging_prefix(name: str) -> str:
    return f".cnnlab_{name}_staging_"


def _remove_interrupted(data_dir: Path, name: str) -> list[Path]:
    """Removes what a killed prepare of `name` left in data_dir; returns the removed paths.

    That is TFDS's <data_dir>/cnnlab_<name>/incomplete.*_<VERSION> folders (TFDS renames them into place
    only when every split is written) and cnnlab's <data_dir>/.cnnlab_<name>_staging_* folders (forced
    prepare). Only call it while holding _lock(data_dir, name): a prepare that is still running holds the
    lock, so anything matching is left over from one that died.
    """
    builder_dir = data_dir / (builders.BUILDER_PREFIX + name)  # name: a SPECS key, imagenet2012, folder_X
    leftovers = sorted(builder_dir.glob(f"incomplete.*_{builders.VERSION}"))
    leftovers += sorted(data_dir.glob(_staging_prefix(name) + "*"))
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        log.info("Removed %s, left by an interrupted prepare of %s", path, name)
    return leftovers


def _sizes_text(sizes: dict[str, int]) -> str:
    return " / ".join(f"{count:,} {split}" for split, count in _train_first(sizes).items())


@_quiet_tfds()
def is_prepared(name: str, *, data_dir=None) -> bool:
    """Whether `name` has complete prepared data in data_dir."""
    _spec(name)
    return _is_prepared(_builder(name, _data_dir(data_dir)))


@_quiet_tfds()
def prepare(name: str, *, data_dir=None, manual_dir=None, force: bool = False, skip_bad: bool = False) -> Path:
    """Prepares `name` from its raw files into data_dir; returns the prepared dataset's directory.

    Already-prepared data is kept unless force=True (which prepares into a staging folder and then swaps
    it in, so a failed forced prepare keeps the previous data). Raises FileNotFoundError with install instructions
    when the raw files are missing, formats.RawFormatError when they are corrupt or a folder holds only
    some of them; in both cases nothing is left that a later load would read (TFDS writes into a
    temporary incomplete.* folder and renames it only when every split is written). Folders left by a
    killed prepare of `name` are removed first. Logs "Preparing NAME from FILES ..." and "Prepared NAME:
    SIZES in SECONDS s -> DIR" (logger "cnnlab.data", INFO).

    imagenet2012 reads ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from <manual_dir>/imagenet2012/
    (or <manual_dir>/); skip_bad (imagenet2012 only) skips and lists bad files instead of stopping.
    Image folders are prepared with prepare_image_folder.
    """
    if name == builders.IMAGENET2012:
        data_dir = _data_dir(data_dir)
        manual = _manual_dir(manual_dir, data_dir)
        tars, missing = builders.find_imagenet_tars(manual)
        if missing:
            raise FileNotFoundError(f"imagenet2012: missing {', '.join(missing)}. To install: "
                                    f"{builders.imagenet_install_hint(manual)}")
        return _prepare_encoded(name, data_dir, lambda d: builders.CnnlabImagenet2012(
            data_dir=os.fspath(d), file_format="array_record", skip_bad=skip_bad),
            f"{tars['train']}, {tars['validation']}", force, manual)
    spec = _spec(name)
    data_dir = _data_dir(data_dir)
    manual = _manual_dir(manual_dir, data_dir)
    location = spec.find_raw(manual)
    if location is None:
        raise FileNotFoundError(
            f"{name}: raw files not found (looked in {manual}/{name}, {manual} and the install locations). "
            f"To install: {_install_hint(spec, manual)}")
    with _lock(data_dir, name):
        _remove_interrupted(data_dir, name)
        builder = _builder(name, data_dir)
        if _is_prepared(builder) and not force:
            return Path(builder.data_dir)
        log.info("Preparing %s from %s ...", name, location.files_text())
        start = time.perf_counter()
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual))
        target = Path(builder.data_dir)
        if not _is_prepared(builder):
            builder.download_and_prepare(download_config=config)
            prepared = builder
        else:
            # force: prepare into a staging data_dir, then swap folders, so a failure keeps the old data.
            staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(name), dir=data_dir))
            try:
                prepared = _builder(name, staging)
                prepared.download_and_prepare(download_config=config)
                target.rename(staging / "previous")
                Path(prepared.data_dir).rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        sizes = {split: info.num_examples for split, info in prepared.info.splits.items()}
        log.info("Prepared %s: %s in %.1f s -> %s", name, _sizes_text(sizes), time.perf_counter() - start,
                 target)
        return target


def decode_records(records: list[bytes], features: tfds.features.FeaturesDict) -> dict[str, np.ndarray]:
    """Serialized tf.train.Example records -> {feature name: array [n, *shape]}, in bulk.

    Equivalent to TFDS's per-record ``features.deserialize_example_np`` for flat Tensor/ClassLabel
    features (tested), about 5x faster: each record's proto is parsed once and every feature is turned
    into one array (bytes features joined and read with one np.frombuffer).
    """
    parsed = [tf_example_pb2.Example.FromString(record).features.feature for record in records]
    columns = {}
    for key, feature in features.items():
        shape, dtype = tuple(feature.shape), np.dtype(feature.np_dtype)
        kind = parsed[0][key].WhichOneof("kind") if parsed else "int64_list"
        if kind == "bytes_list":  # Tensor(encoding=BYTES): one raw buffer per record
            flat = np.frombuffer(b"".join(p[key].bytes_list.value[0] for p in parsed), dtype)
        elif kind == "int64_list":
            flat = np.fromiter(itertools.chain.from_iterable(p[key].int64_list.value for p in parsed), np.int64)
        else:
            raise ValueError(f"feature {key!r}: cannot bulk-decode {kind} records")
        per_record = int(np.prod(shape, dtype=np.int64))
        if flat.size != per_record * len(parsed):
            raise ValueError(f"feature {key!r}: {flat.size} values for {len(parsed)} records of shape {shape}")
        columns[key] = flat.reshape(len(parsed), *shape).astype(dtype, copy=False)
    return columns


def _read_prepared(builder: builders.CnnlabBuilder, ranges) -> dict[str, np.ndarray]:
    columns: dict[str, list[np.ndarray]] = {}
    sources = {}
    for base, start, stop in ranges:
        if stop <= start:
            continue
        if base not in sources:
            sources[base] = builder.as_data_source(split=base).data_source  # ArrayRecord, raw bytes
        for chunk_start in range(start, stop, _READ_CHUNK):
            keys = list(range(chunk_start, min(stop, chunk_start + _READ_CHUNK)))
            records = sources[base].__getitems__(keys)
            for key, values in decode_records(records, builder.info.features).items():
                columns.setdefault(key, []).append(values)
    return {key: np.concatenate(parts) for key, parts in columns.items()}


def _read_raw(splits, ranges) -> dict[str, np.ndarray]:
    columns: dict[str, list[np.ndarray]] = {"image": [], "label": []}
    for base, start, stop in ranges:
        raw = splits[base]
        columns["image"].append(raw.images[start:stop])
        columns["label"].append(raw.labels[start:stop])
        for key, values in raw.extra_labels.items():
            columns.setdefault(key, []).append(values[start:stop])
    return {key: np.concatenate(parts) for key, parts in columns.items()}


@_quiet_tfds()
def load(name: str, split: str, *, data_dir=None, manual_dir=None) -> Dataset:
    """Loads a split of a dataset as uint8 [N, H, W, C] images and int32 [N] labels.

    Reads the prepared TFDS data in data_dir. If it is not prepared but the raw files are present, it is
    prepared first (a warning names the files); digits, when not prepared, is built in memory from
    scikit-learn (nothing is written). Raises ValueError for unknown names/splits (listing the valid
    ones), FileNotFoundError with the install command when neither prepared data nor raw files exist, and
    formats.RawFormatError when the raw files are corrupt, incomplete or refused (UnsafePickleError).
    """
    if name in image_dataset_names(data_dir):
        raise ValueError(
            f"{name!r} holds encoded JPEG/PNG images of many sizes ({_encoded_where(name, data_dir)}): it "
            f"is streamed and decoded batch by batch, not loaded into memory as arrays. Read its records with "
            f"cnnlab.data.loading.data_source({name!r}, {split!r}) or train on it through the streaming "
            f"pipeline; data.load serves the in-memory datasets {', '.join(names())}")
    spec = _spec(name)
    data_dir = _data_dir(data_dir)
    _absolute_ranges(name, split, spec.split_sizes)  # validates the split names before any I/O
    builder = _builder(name, data_dir)
    if not _is_prepared(builder):
        if name == "digits":
            splits = builders.digits_splits()
            ranges = _absolute_ranges(name, split, {s: len(v.labels) for s, v in splits.items()})
            return _dataset(spec, split, _read_raw(splits, ranges))
        manual = _manual_dir(manual_dir, data_dir)
        location = spec.find_raw(manual)
        if location is None:
            raise FileNotFoundError(
                f"dataset {name!r} is not prepared in {data_dir} and its raw files were not found (looked in "
                f"{manual}/{name}, {manual} and the install locations). To install: {_install_hint(spec, manual)}")
        log.warning("%s is not prepared in %s: preparing it now (first use) from %s", name, data_dir,
                    location.files_text())
        prepare(name, data_dir=data_dir, manual_dir=manual)
        builder = _builder(name, data_dir)
    sizes = {s: info.num_examples for s, info in builder.info.splits.items()}
    return _dataset(spec, split, _read_prepared(builder, _absolute_ranges(name, split, sizes)))


def _dataset(spec: builders.DatasetSpec, split: str, columns: dict[str, np.ndarray]) -> Dataset:
    images = columns.pop("image", np.zeros((0, *spec.image_shape), np.uint8)).astype(np.uint8, copy=False)
    labels = columns.pop("label", np.zeros((0,), np.int32)).astype(np.int32, copy=False)
    extra = {key: values.astype(np.int32, copy=False) for key, values in columns.items()}
    return Dataset(spec.name, split, images, labels, list(spec.class_names), extra,
                   {k: list(v) for k, v in spec.extra_class_names.items()})


@_quiet_tfds()
def info(name: str, *, data_dir=None) -> DatasetInfo:
    """Shapes, classes, split sizes and train-split per-channel mean/std ([0, 1] units) of a dataset.

    For the encoded-image datasets (imagenet2012, image folders) image_shape is (None, None, 3): sizes
    vary; mean/std come from the prepared metadata (reduced-size decodes), for an unprepared imagenet2012
    the published ImageNet values.
    """
    if name in image_dataset_names(data_dir):
        return _encoded_info(name, _data_dir(data_dir))
    spec = _spec(name)
    builder = _builder(name, _data_dir(data_dir))
    prepared = _is_prepared(builder)
    if prepared:
        metadata = builder.info.metadata or {}
        sizes = {s: i.num_examples for s, i in builder.info.splits.items()}
        mean, std = tuple(metadata["mean"]), tuple(metadata["std"])
        source = f"computed at prepare time from the prepared train split ({metadata.get('source', '?')})"
    elif name == "digits":
        splits = builders.digits_splits()
        sizes = {s: len(v.labels) for s, v in splits.items()}
        mean, std = builders.channel_stats(splits["train"].images)
        source = "computed from the train split (sklearn load_digits, in memory)"
    else:
        sizes, mean, std, source = dict(spec.split_sizes), spec.published_mean, spec.published_std, \
            spec.stats_source
    return DatasetInfo(spec.name, spec.image_shape, len(spec.class_names), list(spec.class_names),
                       _train_first(sizes), mean, std, source, prepared,
                       os.fspath(builder.data_dir) if prepared else None,
                       {k: list(v) for k, v in spec.extra_class_names.items()})


@dataclasses.dataclass(frozen=True)
class Status:
    """One line of `python -m cnnlab.data`: is it prepared, where, how big, where are its raw files."""

    name: str
    prepared: bool
    path: str
    split_sizes: dict[str, int]
    raw: str | None  # description of the raw files found, None if missing (or unusable)
    install_hint: str
    raw_problem: str | None = None  # why the raw files found cannot be used (RawFormatError's message)


@_quiet_tfds()
def status(*, data_dir=None, manual_dir=None) -> list[Status]:
    """The state of every dataset in data_dir."""
    data_dir = _data_dir(data_dir)
    manual = _manual_dir(manual_dir, data_dir)
    rows = []
    for name in names():
        spec = builders.SPECS[name]
        builder = _builder(name, data_dir)
        prepared = _is_prepared(builder)
        sizes = ({s: i.num_examples for s, i in builder.info.splits.items()} if prepared
                 else dict(spec.split_sizes))
        try:
            location, problem = spec.find_raw(manual), None
        except formats.RawFormatError as e:  # e.g. a manual dir with 3 of the 4 IDX files
            location, problem = None, str(e)
        rows.append(Status(name, prepared, os.fspath(builder.data_dir), _train_first(sizes),
                           location.description if location else None, _install_hint(spec, manual), problem))
    return rows


# ------------------------------------------------------------------------ encoded-image datasets


def image_folder_names(data_dir=None) -> list[str]:
    """Names of the image folders prepared in data_dir (prepare_image_folder), sorted."""
    prefix = builders.BUILDER_PREFIX + builders.FOLDER_PREFIX
    data_dir = _data_dir(data_dir)
    if not data_dir.is_dir():
        return []
    return sorted(p.name.removeprefix(prefix) for p in data_dir.glob(prefix + "*")
                  if (p / builders.VERSION / "dataset_info.json").is_file())


def image_dataset_names(data_dir=None) -> list[str]:
    """The encoded-image datasets: imagenet2012 and the image folders prepared in data_dir."""
    return [builders.IMAGENET2012, *image_folder_names(data_dir)]


def _encoded_key(name: str) -> str:
    """The key of `name` in lock, staging and builder folder names: imagenet2012 or folder_<name>."""
    return name if name == builders.IMAGENET2012 else builders.FOLDER_PREFIX + name


def _encoded_dir(name: str, data_dir: Path) -> Path:
    return data_dir / (builders.BUILDER_PREFIX + _encoded_key(name)) / builders.VERSION


def _encoded_where(name: str, data_dir) -> str:
    path = _encoded_dir(name, _data_dir(data_dir))
    return f"prepared in {path}" if (path / "dataset_info.json").is_file() else "not prepared"


def _prepare_encoded(name: str, data_dir: Path, make_builder, files_text: str, force: bool,
                     manual: Path | None = None) -> Path:
    """prepare()'s locking, leftover removal and staging, for the encoded-image builders."""
    key = _encoded_key(name)
    with _lock(data_dir, key):
        _remove_interrupted(data_dir, key)
        target = _encoded_dir(name, data_dir)
        if (target / "dataset_info.json").is_file() and not force:
            return target
        log.info("Preparing %s from %s ...", name, files_text)
        start = time.perf_counter()
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual) if manual else None)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(key), dir=data_dir))
        try:  # always staged: a failure keeps the previous data (if any) and leaves nothing readable
            prepared = make_builder(staging)
            prepared.download_and_prepare(download_config=config)
            if target.exists():
                target.rename(staging / "previous")
            target.parent.mkdir(parents=True, exist_ok=True)
            Path(prepared.data_dir).rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        sizes = {split: split_info.num_examples for split, split_info in prepared.info.splits.items()}
        skipped = prepared.info.metadata.get("num_skipped", 0)
        log.info("Prepared %s: %s in %.1f s -> %s%s", name, _sizes_text(sizes), time.perf_counter() - start,
                 target, f" ({skipped:,} bad files skipped, listed in its metadata)" if skipped else "")
        return target


@_quiet_tfds()
def prepare_image_folder(name: str, root, *, test_root=None, test_fraction: float = 0.2, split_seed: int = 0,
                         skip_bad: bool = False, data_dir=None, force: bool = False) -> Path:
    """Prepares ROOT/<class name>/<image file> (JPEG, PNG) as dataset `name`; returns its directory.

    Classes: the sorted sub-folder names of root (torchvision ImageFolder's order). Test split: the
    images under test_root (its class folders must be classes of root), else a seeded stratified
    test_fraction of root's images (images.stratified_split). Records keep the file bytes as they are;
    every file is checked by a reduced-size decode. Bad files (not decodable, not .jpg/.jpeg/.png, empty
    class folders, files directly in root) raise formats.RawFormatError naming the file, or with
    skip_bad are skipped and listed in the metadata. Prepared again only with force.
    """
    builder_cls = builders.image_folder_builder(name)
    if test_root is None and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data_dir = _data_dir(data_dir)
    root = Path(root).expanduser().absolute()
    test_root = Path(test_root).expanduser().absolute() if test_root is not None else None
    images.list_image_folder(root, images.BadFiles(), True)  # a missing root fails here, before any lock
    return _prepare_encoded(
        name, data_dir, lambda d: builder_cls(
            data_dir=os.fspath(d), file_format="array_record", root=root, test_root=test_root,
            test_fraction=test_fraction, split_seed=split_seed, skip_bad=skip_bad),
        f"{root}" + (f" (train) and {test_root} (test)" if test_root else f" (test: {test_fraction:g} of it, "
                                                                            f"split_seed {split_seed})"),
        force)


def _encoded_reader(name: str, data_dir: Path):
    path = _encoded_dir(name, data_dir)
    if not (path / "dataset_info.json").is_file():
        hint = (builders.imagenet_install_hint(_manual_dir(None, data_dir)) if name == builders.IMAGENET2012
                else f"run `python -m cnnlab.data prepare image_folder --name={name} --root=DIR`")
        raise FileNotFoundError(f"{name} is not prepared in {data_dir}; {hint}")
    return tfds.builder_from_directory(os.fspath(path))


@_quiet_tfds()
def data_source(name: str, split: str, *, data_dir=None):
    """Random access to a prepared encoded-image split (TFDS data source, no TensorFlow).

    source[i] -> {"image": bytes (JPEG/PNG), "label": int, "file_name": bytes (UTF-8)}; len(source).
    `split` accepts TFDS slicing ("train[:1000]").
    """
    return _encoded_reader(name, _data_dir(data_dir)).as_data_source(split=split)


IMAGENET_PUBLISHED_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation constants
IMAGENET_PUBLISHED_STD = (0.229, 0.224, 0.225)


def _encoded_info(name: str, data_dir: Path) -> DatasetInfo:
    path = _encoded_dir(name, data_dir)
    if (path / "dataset_info.json").is_file():
        reader = _encoded_reader(name, data_dir)
        metadata = reader.info.metadata or {}
        class_names = list(reader.info.features["label"].names)
        sizes = {s: i.num_examples for s, i in reader.info.splits.items()}
        mean, std = tuple(metadata["mean"]), tuple(metadata["std"])
        source = (f"computed at prepare time from reduced-size decodes of the train split "
                  f"({metadata.get('source', '?')})")
        return DatasetInfo(name, (None, None, 3), len(class_names), class_names, _train_first(sizes), mean,
                           std, source, True, os.fspath(path))
    class_names = images.imagenet_labels()[0]  # only imagenet2012 is known unprepared
    return DatasetInfo(name, (None, None, 3), len(class_names), class_names,
                       dict(builders.IMAGENET_SPLIT_SIZES), IMAGENET_PUBLISHED_MEAN, IMAGENET_PUBLISHED_STD,
                       "published ImageNet statistics (torchvision); replaced by values computed at prepare "
                       "time", False, None)


@_quiet_tfds()
def image_status(*, data_dir=None, manual_dir=None) -> list[Status]:
    """The state of imagenet2012 and of every image folder prepared in data_dir.

    imagenet2012's raw_problem names each missing tar with its full path when only one is there; raw
    is None when neither is.
    """
    data_dir = _data_dir(data_dir)
    manual = _manual_dir(manual_dir, data_dir)
    rows = []
    for name in image_dataset_names(data_dir):
        path = _encoded_dir(name, data_dir)
        prepared = (path / "dataset_info.json").is_file()
        sizes = (_train_first({s: i.num_examples for s, i in _encoded_reader(name, data_dir).info.splits.items()})
                 if prepared else dict(builders.IMAGENET_SPLIT_SIZES))
        raw = problem = None
        hint = ""
        if name == builders.IMAGENET2012:
            tars, missing = builders.find_imagenet_tars(manual)
            hint = builders.imagenet_install_hint(manual)
            if tars and missing:
                problem = f"missing {', '.join(missing)} (found {', '.join(map(os.fspath, tars.values()))})"
            elif tars:
                raw = ", ".join(map(os.fspath, tars.values()))
        else:
            raw = f"image folder {(_encoded_reader(name, data_dir).info.metadata or {}).get('root', '?')}"
        rows.append(Status(name, prepared, os.fspath(path), sizes, raw, hint, problem))
    return rows
