"""Readers of encoded-image datasets: ILSVRC2012 tars and ROOT/<class>/<image> folders, PIL only.

Records are never decoded pixels: each example is the file's encoded bytes (JPEG or PNG), its label and
its file name. Every file is checked at read time by a reduced-size decode (PIL's ``draft`` lets the JPEG
decoder stop at 1/8 scale, so a full-size check costs a fraction of a full decode), which also yields the
per-channel pixel sums used for the train split's mean/std. A file that does not decode raises
:class:`formats.RawFormatError` naming it; with ``skip_bad=True`` it is skipped instead and listed in
:attr:`BadFiles`.

ILSVRC2012 (the official files, as TFDS's manual-download builder expects them):
  * ``ILSVRC2012_img_train.tar``: 1,000 inner tars ``<wnid>.tar``, each holding ``<wnid>_<n>.JPEG``.
    Both levels are read with ``tarfile`` in stream mode (``"r|"``): one member's bytes at a time.
  * ``ILSVRC2012_img_val.tar``: 50,000 ``ILSVRC2012_val_<8 digits>.JPEG``. Their labels are the lines of
    TFDS's ``validation_labels.txt``, in the alphabetical order of the file names; for the official
    names that is the numeric order, so image k takes line k (1-based) without a first pass over the tar.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import io
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cnnlab.data.formats import RawFormatError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # case-insensitive; what image_folder accepts
JPEG_QUALITY = 95  # re-encoding of ImageNet's CMYK / PNG files (tf.image.encode_jpeg's default, as TFDS)
CHECK_SIZE = (64, 64)  # draft target of the check decode: JPEGs decode at the smallest scale >= this
VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")
TRAIN_NAME = re.compile(r"^(n\d{8})_\d+\.JPEG$")


def _tfds_imagenet_facts() -> tuple[frozenset[str], frozenset[str]]:
    """(CMYK_IMAGES, PNG_IMAGES) of TFDS's imagenet2012 builder: the files it re-encodes to RGB JPEG.

    Read from the installed module (it imports TensorFlow lazily, so this works without it); the copy
    below, from tensorflow-datasets 4.9.10 datasets/imagenet2012/imagenet2012_dataset_builder.py, is used
    only when that module is not importable.
    """
    try:
        from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as official
        return frozenset(official.CMYK_IMAGES), frozenset(official.PNG_IMAGES)
    except Exception:  # noqa: BLE001 -- any import failure means: use the copy
        return frozenset([
            "n01739381_1309.JPEG", "n02077923_14822.JPEG", "n02447366_23489.JPEG", "n02492035_15739.JPEG",
            "n02747177_10752.JPEG", "n03018349_4028.JPEG", "n03062245_4620.JPEG", "n03347037_9675.JPEG",
            "n03467068_12171.JPEG", "n03529860_11437.JPEG", "n03544143_17228.JPEG", "n03633091_5218.JPEG",
            "n03710637_5125.JPEG", "n03961711_5286.JPEG", "n04033995_2932.JPEG", "n04258138_17003.JPEG",
            "n04264628_27969.JPEG", "n04336792_7448.JPEG", "n04371774_5854.JPEG", "n04596742_4225.JPEG",
            "n07583066_647.JPEG", "n13037406_4650.JPEG"]), frozenset(["n02105855_2933.JPEG"])


CMYK_IMAGES, PNG_IMAGES = _tfds_imagenet_facts()


def imagenet_label_files() -> tuple[Path, Path]:
    """(labels.txt, validation_labels.txt) shipped by the installed tensorflow-datasets package."""
    folder = importlib.resources.files("tensorflow_datasets") / "datasets" / "imagenet2012"
    return Path(os.fspath(folder / "labels.txt")), Path(os.fspath(folder / "validation_labels.txt"))


def imagenet_labels() -> tuple[list[str], list[str]]:
    """(the 1,000 wnids in label order, the 50,000 validation wnids in file-name order), from TFDS."""
    labels, validation = imagenet_label_files()
    return labels.read_text().split(), validation.read_text().split()


@dataclasses.dataclass
class BadFiles:
    """Files skipped under skip_bad: (file name, why) in the order met."""

    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def handle(self, name: str, problem: str, skip_bad: bool, hint: str = "") -> None:
        """Raises RawFormatError(name, problem) unless skip_bad, in which case the file is recorded."""
        if not skip_bad:
            raise RawFormatError(name, problem + (hint or " (pass --skip_bad / skip_bad=True to skip such "
                                                           "files and list them in the dataset's metadata)"))
        self.skipped.append((name, problem))


@dataclasses.dataclass
class PixelSums:
    """Running per-channel sums of RGB pixel values in [0, 1] over checked images (reduced-size decodes)."""

    total: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    total_sq: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3))
    count: int = 0

    def add(self, rgb: np.ndarray) -> None:
        pixels = rgb.reshape(-1, 3).astype(np.float64) / 255.0
        self.total += pixels.sum(0)
        self.total_sq += np.square(pixels).sum(0)
        self.count += len(pixels)

    def mean_std(self) -> tuple[list[float], list[float]]:
        if self.count == 0:
            return [0.0] * 3, [0.0] * 3
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 0.0))
        return [float(m) for m in mean], [float(s) for s in std]


def check_image(data: bytes) -> tuple[str, str, np.ndarray]:
    """(PIL format name, PIL mode, RGB uint8 [h, w, 3] reduced-size decode) of an encoded image.

    Raises ValueError saying why when `data` is not a complete JPEG or PNG: not an image, another
    format, or truncated/corrupt (PIL raises on a truncated JPEG or PNG since LOAD_TRUNCATED_IMAGES is off).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, mode = image.format, image.mode
            if kind not in ("JPEG", "PNG"):
                raise ValueError(f"is a {kind} image; only JPEG and PNG are accepted")
            image.draft("RGB", CHECK_SIZE)  # JPEG only: decode at 1/2..1/8 scale
            rgb = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise ValueError("is not an image file PIL can identify (expected JPEG or PNG)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"does not decode ({e}): truncated or corrupt") from None
    return kind, mode, rgb


def to_rgb_jpeg(data: bytes) -> bytes:
    """Any PIL-readable image (CMYK JPEG, PNG, grey...) -> RGB JPEG bytes at JPEG_QUALITY."""
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


# ------------------------------------------------------------------------------------------- ILSVRC


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """One record: encoded image bytes, int label, file name (relative, as in the source)."""

    image: bytes
    label: int
    file_name: str


def _checked(name: str, data: bytes, bad: BadFiles, skip_bad: bool, sums: PixelSums | None,
             fix: bool) -> bytes | None:
    """`data` checked (and, when fix, turned into RGB JPEG if it is a PNG or CMYK); None if skipped."""
    try:
        kind, mode, rgb = check_image(data)
        # TFDS's lists name the known cases; the mode check also catches any other non-RGB file. Grey
        # ("L") JPEGs are valid ImageNet files and stay as they are (decoders turn them into RGB).
        base = os.path.basename(name)
        if fix and (kind != "JPEG" or mode not in ("RGB", "L") or base in CMYK_IMAGES or base in PNG_IMAGES):
            data = to_rgb_jpeg(data)
    except ValueError as e:
        bad.handle(name, str(e), skip_bad)
        return None
    if sums is not None:
        sums.add(rgb)
    return data


def iter_imagenet_train(tar_path: str | os.PathLike, class_names: list[str], bad: BadFiles,
                        skip_bad: bool = False, sums: PixelSums | None = None) -> Iterator[EncodedExample]:
    """Streams ILSVRC2012_img_train.tar: <wnid>.tar members, each of <wnid>_<n>.JPEG files.

    Labels are positions in `class_names` (the wnids of TFDS's labels.txt). PNG and CMYK files (TFDS's
    lists, plus any other non-RGB-JPEG found) are re-encoded to RGB JPEG. Memory: one image at a time.
    """
    label_of = {wnid: i for i, wnid in enumerate(class_names)}
    tar_path = os.fspath(tar_path)
    with tarfile.open(tar_path, mode="r|") as outer:
        for member in outer:
            where = f"{tar_path}:{member.name}"
            wnid = member.name.removesuffix(".tar")
            if not member.isfile() or not member.name.endswith(".tar") or wnid not in label_of:
                bad.handle(where, f"is not a <wnid>.tar of a known class (the train tar holds one tar per "
                                  f"class, named like {class_names[0]}.tar)", skip_bad)
                continue
            try:
                with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                    for image_member in inner:
                        name = image_member.name
                        if not image_member.isfile():
                            continue
                        if not TRAIN_NAME.match(os.path.basename(name)):
                            bad.handle(f"{where}:{name}", "is not a <wnid>_<n>.JPEG file", skip_bad)
                            continue
                        data = inner.extractfile(image_member).read()
                        data = _checked(f"{where}:{name}", data, bad, skip_bad, sums, fix=True)
                        if data is not None:
                            yield EncodedExample(data, label_of[wnid], os.path.basename(name))
            except tarfile.TarError as e:
                bad.handle(where, f"is not a readable tar ({e})", skip_bad)


def iter_imagenet_validation(tar_path: str | os.PathLike, class_names: list[str], validation_wnids: list[str],
                             bad: BadFiles, skip_bad: bool = False) -> Iterator[EncodedExample]:
    """Streams ILSVRC2012_img_val.tar; ILSVRC2012_val_<k>.JPEG takes line k of validation_labels.txt."""
    label_of = {wnid: i for i, wnid in enumerate(class_names)}
    tar_path = os.fspath(tar_path)
    with tarfile.open(tar_path, mode="r|") as archive:
        for member in archive:
            if not member.isfile():
                continue
            where = f"{tar_path}:{member.name}"
            match = VAL_NAME.match(os.path.basename(member.name))
            if match is None:
                bad.handle(where, "is not an ILSVRC2012_val_<8 digits>.JPEG file", skip_bad)
                continue
            index = int(match.group(1)) - 1
            if not 0 <= index < len(validation_wnids) or validation_wnids[index] not in label_of:
                bad.handle(where, f"has no validation label (validation_labels.txt has "
                                  f"{len(validation_wnids):,} lines, for ILSVRC2012_val_00000001..."
                                  f"{len(validation_wnids):08d})", skip_bad)
                continue
            data = _checked(where, archive.extractfile(member).read(), bad, skip_bad, None, fix=True)
            if data is not None:
                yield EncodedExample(data, label_of[validation_wnids[index]], os.path.basename(member.name))


# ------------------------------------------------------------------------------------- image folders


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """An image folder's classes and files: class_names sorted; files [(relative path, label)] sorted."""

    root: Path
    class_names: list[str]
    files: list[tuple[str, int]]


def list_image_folder(root: str | os.PathLike, bad: BadFiles, skip_bad: bool = False,
                      class_names: list[str] | None = None) -> FolderListing:
    """Lists ROOT/<class>/<image> (classes = sorted sub-folder names, as torchvision's ImageFolder).

    Files are taken recursively below each class folder; names starting with "." (.DS_Store...) are
    ignored. A file without a .jpg/.jpeg/.png extension, a file directly in ROOT and an empty class folder
    are bad input. With `class_names` given (a test root), every class folder must be one of them and
    labels follow that list.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for stray in sorted(p for p in root.iterdir() if not p.is_dir() and not p.name.startswith(".")):
        bad.handle(os.fspath(stray), "is a file directly in the root; images go in ROOT/<class name>/",
                   skip_bad)
    if not folders:
        raise RawFormatError(root, "holds no class folders; expected ROOT/<class name>/<image file>")
    if class_names is None:
        class_names = folders
    else:
        unknown = [f for f in folders if f not in class_names]
        if unknown:
            raise RawFormatError(root, f"class folders {unknown} are not classes of the train root "
                                       f"({len(class_names)} classes: {class_names[:10]}...)")
    files = []
    for folder in folders:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = Path(dirpath) / filename
                if not filename.lower().endswith(IMAGE_EXTENSIONS):
                    bad.handle(os.fspath(path), f"is not an image file (accepted: "
                                                f"{', '.join(IMAGE_EXTENSIONS)}, any case)", skip_bad)
                    continue
                found.append(path.relative_to(root).as_posix())
        if not found:
            bad.handle(os.fspath(root / folder), "is an empty class folder (no .jpg/.jpeg/.png files)",
                       skip_bad)
        files += [(rel, class_names.index(folder)) for rel in sorted(found)]
    return FolderListing(root, list(class_names), files)


def stratified_split(files: list[tuple[str, int]], test_fraction: float,
                     seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test): for each label in increasing order, its files (in listing order) are permuted with
    np.random.default_rng(seed) (one generator for all labels) and the first round(test_fraction * n) go
    to test; both splits keep listing order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.array([label for _, label in files], np.int64)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(files), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test_mask[rng.permutation(members)[: int(round(test_fraction * len(members)))]] = True
    return ([f for f, t in zip(files, test_mask) if not t], [f for f, t in zip(files, test_mask) if t])


def iter_folder_files(root: Path, files: list[tuple[str, int]], bad: BadFiles, skip_bad: bool = False,
                      sums: PixelSums | None = None) -> Iterator[EncodedExample]:
    """Reads and checks each listed file; the bytes are kept as they are (JPEG or PNG)."""
    for rel, label in files:
        path = root / rel
        try:
            data = path.read_bytes()
        except OSError as e:
            bad.handle(os.fspath(path), f"cannot be read ({e.strerror})", skip_bad)
            continue
        data = _checked(os.fspath(path), data, bad, skip_bad, sums, fix=False)
        if data is not None:
            yield EncodedExample(data, label, rel)
