"""``demo_photos``: a small image folder made from installed data, so the streaming path runs on any laptop.

The ImageNet recipes' ``:runlocal`` variants train on it: the same code path as ImageNet (encoded JPEG/PNG
records of many sizes, streamed, decoded, random-resized crops) with nothing to download. Each image is one of
scikit-learn's 1,797 handwritten digits (8x8, shipped with the package) enlarged to a random size between 48 and
160 pixels a side (random aspect ratio), drawn in a random ink colour on a random paper colour, with mild noise;
most are RGB JPEGs (quality 90), some greyscale JPEGs, some PNGs. Ten classes "0".."9"; the test split is a
seeded stratified 20 %.

    python -m cnnlab.data prepare demo_photos    # a few seconds; also done on first use by training
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data import builders, loading

NAME = "demo_photos"
SEED = 0
SIZE_RANGE = (48, 160)


def write_demo_folder(root: str | os.PathLike, *, per_class: int | None = None, seed: int = SEED) -> int:
    """Writes ROOT/<digit>/<index>.{jpg,png}; returns the number of files. per_class: at most that many per digit
    (None: all 1,797 digits)."""
    from sklearn.datasets import load_digits  # installed with cnnlab; read from the package, no download

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    written = 0
    counts = np.zeros(10, int)
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        if per_class is not None and counts[label] >= per_class:
            continue
        counts[label] += 1
        height = int(rng.integers(*SIZE_RANGE))
        width = int(np.clip(height * np.exp(rng.uniform(-0.35, 0.35)), *SIZE_RANGE))
        ink, paper = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.abs(ink.astype(int) - paper).sum() < 200:  # keep the digit visible
            ink = 255 - paper
        alpha = np.asarray(Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BICUBIC), np.float32)[..., None] / 255.0
        image = alpha * ink + (1 - alpha) * paper + rng.normal(0, 6, (height, width, 3))
        picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        kind = rng.random()
        if kind < 0.1:
            picture.save(folder / f"{index:04d}.png")
        elif kind < 0.2:
            picture.convert("L").save(folder / f"{index:04d}.jpg", quality=90)
        else:
            picture.save(folder / f"{index:04d}.jpg", quality=90)
        written += 1
    return written


def ensure_prepared(data_dir=None, *, force: bool = False) -> Path:
    """Writes the demo folder under the raw dir (once) and prepares it as ``demo_photos`` in data_dir."""
    if not force and NAME in loading.image_folder_names(data_dir):
        return loading._encoded_dir(NAME, loading._data_dir(data_dir))
    root = builders.default_raw_dir() / NAME
    if force or not root.is_dir() or not any(root.iterdir()):
        write_demo_folder(root)
    return loading.prepare_image_folder(NAME, root, data_dir=data_dir, force=force)
