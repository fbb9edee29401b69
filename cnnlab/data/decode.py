"""Host-side image decoding and crops for the streaming pipeline: encoded JPEG/PNG bytes -> uint8 [S, S, 3].

Every function takes the encoded bytes of one image and returns RGB pixels (grey, palette, RGBA and CMYK images
are converted, so every output has 3 channels). The crop is chosen in the coordinates of the full image, and for
JPEGs PIL's `draft` then asks libjpeg for a 1/2, 1/4 or 1/8 scale decode (a reduced-size inverse DCT, several
times cheaper than a full decode) whenever the crop, at that scale, still has at least S pixels on its shorter
side: the crop is only ever shrunk to S afterwards, so nothing below S's resolution is lost. The final resize is
PIL's antialiased bilinear over the crop box (the same filter torchvision applies to PIL images).

EXIF orientation is not applied (ImageNet's pipelines and torchvision's ImageFolder do not either).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Inception-style random-resized crop (Szegedy et al. 2015; the ranges torchvision's RandomResizedCrop uses).
AREA_RANGE = (0.08, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
# Evaluation: resize the shorter side to S * 256 / 224, cut the centre S x S.
EVAL_RESIZE_RATIO = 256 / 224


def _open(data: bytes | np.ndarray) -> Image.Image:
    """Opens encoded image bytes lazily (header only); a clear error if they are not an image PIL reads."""
    if isinstance(data, np.ndarray):  # a TFDS data source returns bytes scalars as 0-d object arrays
        data = data.item()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected encoded image bytes, got {type(data).__name__}")
    try:
        return Image.open(io.BytesIO(data))
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ValueError(f"cannot decode image ({len(data)} bytes): {error}; the record's 'image' must hold the "
                         f"encoded bytes of a JPEG or PNG file") from error


def _reduce_for(image: Image.Image, pixels_per_output_pixel: float) -> float:
    """Asks libjpeg for a 1/s-scale decode, s in {8, 4, 2, 1} the largest with s <= pixels_per_output_pixel;
    returns s (1.0 for non-JPEG images and JPEGs that draft cannot reduce).

    pixels_per_output_pixel: full-resolution pixels across the crop's shorter side / output size, so after the
    reduction the crop still has at least the output size in pixels.
    """
    factor = 1
    for candidate in (8, 4, 2):
        if pixels_per_output_pixel >= candidate:
            factor = candidate
            break
    if factor == 1 or image.format != "JPEG":
        return 1.0
    width, height = image.size
    # PIL picks the largest s in {8, 4, 2, 1} with s <= min(W // w, H // h); asking for (W // f, H // f) gives f.
    result = image.draft(image.mode, (max(width // factor, 1), max(height // factor, 1)))
    if result is None:
        return 1.0
    return width / result[1][2]  # result[1] = (0, 0, W / s, H / s)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, P, RGBA, CMYK (Adobe-inverted CMYK JPEGs are handled by PIL), I;16
    return np.asarray(image, dtype=np.uint8)


def decode_rgb(data: bytes | np.ndarray) -> np.ndarray:
    """Full-resolution decode: encoded bytes -> uint8 [H, W, 3]."""
    image = _open(data)
    try:
        image.load()
    except Exception as error:
        raise ValueError(f"cannot decode image ({len(data)} bytes): {error}") from error
    return _to_rgb_array(image)


def image_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """(height, width) from the header alone."""
    width, height = _open(data).size
    return height, width


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, *,
                            area_range: tuple[float, float] = AREA_RANGE,
                            aspect_range: tuple[float, float] = ASPECT_RANGE,
                            attempts: int = 10) -> tuple[int, int, int, int]:
    """Inception crop window (top, left, crop_height, crop_width) in pixels of a height x width image.

    Draws a target area uniformly in area_range x image area and a log-uniform aspect ratio (width / height) in
    aspect_range; keeps the first of `attempts` draws that fits inside the image, at a uniform position. If none
    fits, falls back to the largest centred window whose aspect ratio is clamped into aspect_range.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image must be non-empty, got {height}x{width}")
    area = height * width
    log_ratio = (math.log(aspect_range[0]), math.log(aspect_range[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(*area_range)
        ratio = math.exp(rng.uniform(*log_ratio))
        crop_width = int(round(math.sqrt(target_area * ratio)))
        crop_height = int(round(math.sqrt(target_area / ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    ratio = width / height
    if ratio < aspect_range[0]:
        crop_width, crop_height = width, int(round(width / aspect_range[0]))
    elif ratio > aspect_range[1]:
        crop_height, crop_width = height, int(round(height * aspect_range[1]))
    else:
        crop_height, crop_width = height, width
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def _crop_resize(image: Image.Image, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Resizes the (left, top, right, bottom) full-resolution box of `image` to size x size, decoding at the
    smallest JPEG scale that keeps at least `size` pixels across the box's shorter side."""
    left, top, right, bottom = box
    scale = _reduce_for(image, min(right - left, bottom - top) / size)
    try:
        image.load()
    except Exception as error:
        raise ValueError(f"cannot decode image: {error}") from error
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # CMYK, P, RGBA...: resample in RGB
    reduced_box = (left / scale, top / scale, right / scale, bottom / scale)
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=reduced_box)
    return _to_rgb_array(resized)


def decode_random_crop(data: bytes | np.ndarray, size: int, rng: np.random.Generator, *,
                       flip: bool = True) -> np.ndarray:
    """Training view: Inception random-resized crop of the decoded image, resized to size x size, mirrored
    left-right with probability 1/2 when flip. -> uint8 [size, size, 3]. All randomness comes from `rng`.
    """
    image = _open(data)
    width, height = image.size
    top, left, crop_height, crop_width = random_resized_crop_box(height, width, rng)
    mirror = flip and bool(rng.integers(0, 2))
    pixels = _crop_resize(image, (left, top, left + crop_width, top + crop_height), size)
    return pixels[:, ::-1] if mirror else pixels


def decode_center_crop(data: bytes | np.ndarray, size: int, *,
                       resize_ratio: float = EVAL_RESIZE_RATIO) -> np.ndarray:
    """Evaluation view: resize the shorter side to round(size * resize_ratio), cut the centre size x size.
    -> uint8 [size, size, 3]. Computed as one resize of the matching full-resolution box."""
    image = _open(data)
    width, height = image.size
    resized_shorter = round(size * resize_ratio)
    # The size x size centre window of the resized image covers size / scale full-resolution pixels.
    extent = size * min(width, height) / resized_shorter
    left, top = (width - extent) / 2, (height - extent) / 2
    return _crop_resize(image, (left, top, left + extent, top + extent), size)
