"""Grey levels and the foreground: quantisation to L levels and Otsu's threshold, one image at a time.

Conventions (what ``describe`` and every descriptor assume):

* An image is one 2-D array ``[H, W]`` of ``uint8`` (values 0..255) or of floats in ``[0, 1]``.
* Grey levels: ``quantize(image, levels)`` maps it to integers ``0..levels-1``: ``uint8`` values ``v`` go to
  ``v * levels // 256`` (the identity when ``levels == 256``), floats ``x`` go to ``round(x * (levels - 1))``
  after clipping to ``[0, 1]``.
* Otsu's threshold (``otsu_threshold``) is computed on those integer grey levels exactly as
  ``skimage.filters.threshold_otsu`` computes it on an integer image: the candidate thresholds are the
  levels ``t`` with ``min(image) <= t < max(image)``; ``t`` maximises the between-class variance
  ``w1 w2 (m1 - m2)^2`` of the classes ``{<= t}`` and ``{> t}``; ties go to the smallest ``t``; a constant image
  returns its value (so its foreground ``image > t`` is empty). On ``uint8`` with ``levels=256`` the result
  equals scikit-image's threshold for every image (tested).
* The foreground is ``levels_image > t`` for Otsu's ``t``; an explicit ``threshold`` is compared with the image
  in its own units (``image > threshold``: 0..255 for ``uint8``, 0..1 for floats).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_image(image, *, name: str = "image") -> None:
    """Raises a clear error unless ``image`` is one 2-D uint8, bool or floating image; a concrete float image
    must also be finite and in [0, 1] (``check_float_range``). Shapes are static under jit."""
    if image.ndim != 2:
        raise ValueError(f"{name} must be one 2-D image [H, W]; got shape {tuple(image.shape)}. "
                         "Use describe() for a batch [N, H, W, 1].")
    check_dtype(image.dtype, name=name)
    check_float_range(image, name=name)


def check_float_range(images, *, name: str = "images") -> None:
    """Float images must be finite and lie in [0, 1]; raises ValueError saying what was found and what to do.

    Checked only on concrete arrays (numpy or jax arrays outside a trace): under ``jit`` the values are not
    known, so callers check on the host first (``describe`` does). Without it, 0..255 floats are clipped to 1
    by ``quantize`` and NaN compares False everywhere, so both silently give an empty foreground (area 0).
    """
    if isinstance(images, jax.core.Tracer) or not np.issubdtype(np.dtype(images.dtype), np.floating):
        return
    if images.size == 0:
        return
    if isinstance(images, jax.Array):   # reduce where the data lives; only three scalars come back
        finite = jnp.isfinite(images)
        bad, low, high = jax.device_get((jnp.sum(~finite), jnp.min(jnp.where(finite, images, jnp.inf)),
                                         jnp.max(jnp.where(finite, images, -jnp.inf))))
    else:
        values = np.asarray(images)
        finite = np.isfinite(values)
        bad = int(values.size - np.count_nonzero(finite))
        low = np.min(values, initial=np.inf, where=finite)
        high = np.max(values, initial=-np.inf, where=finite)
    if bad:
        raise ValueError(f"{name} hold {int(bad)} NaN or infinite values; float images must be finite and lie in "
                         "[0, 1]. Replace or drop those pixels first.")
    if high > 1.0:
        raise ValueError(f"{name} are float with values up to {float(high)}; float images must lie in [0, 1] "
                         "(divide by 255) or pass uint8.")
    if low < 0.0:
        raise ValueError(f"{name} are float with values down to {float(low)}; float images must lie in [0, 1] "
                         "(rescale them) or pass uint8.")


def check_dtype(dtype, *, name: str = "image") -> None:
    dtype = np.dtype(dtype)
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating) or dtype == np.bool_):
        raise TypeError(f"{name} must be uint8 (0..255), floating point (0..1) or bool; got dtype {dtype}. "
                        "Convert it, e.g. image.astype(np.uint8).")


def check_scalar_threshold(threshold) -> None:
    """One image takes one threshold (a scalar); a batch's thresholds go to ``describe``."""
    if threshold is not None and jnp.ndim(threshold) != 0:
        raise ValueError(f"threshold for one image must be a scalar; got shape {tuple(jnp.shape(threshold))}. "
                         "For one threshold per image use describe(images, threshold=[N values]).")


def check_levels(levels: int) -> int:
    if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool) or not 2 <= levels <= 256:
        raise ValueError(f"levels must be an integer in 2..256; got {levels!r}.")
    return int(levels)


def quantize(image: jax.Array, levels: int = 256) -> jax.Array:
    """Grey levels of one image: int32 ``[H, W]`` in ``0..levels-1`` (see the module docstring)."""
    levels = check_levels(levels)
    image = jnp.asarray(image)
    if image.dtype == jnp.bool_:
        return image.astype(jnp.int32) * (levels - 1)
    if image.dtype == jnp.uint8:
        return (image.astype(jnp.int32) * levels) // 256
    return jnp.round(jnp.clip(image.astype(jnp.float32), 0.0, 1.0) * (levels - 1)).astype(jnp.int32)


def histogram(levels_image: jax.Array, levels: int) -> jax.Array:
    """Counts of each grey level: int32 ``[levels]`` for integer levels ``[H, W]`` in ``0..levels-1``."""
    return jnp.bincount(levels_image.reshape(-1), length=levels).astype(jnp.int32)


def otsu_threshold(levels_image: jax.Array, levels: int = 256) -> jax.Array:
    """Otsu's threshold of integer grey levels ``[H, W]`` (int32 scalar, a grey level; module docstring)."""
    return otsu_from_histogram(histogram(levels_image, levels))


def otsu_from_histogram(counts: jax.Array) -> jax.Array:
    """Otsu's threshold (int32 grey level) from the grey-level counts ``[L]`` of one image.

    Computed in float64 (``jax.enable_x64`` around this function only) with scikit-image's operations in
    scikit-image's order, so near-ties between thresholds (which are common: empty bins and symmetric
    histograms) resolve to the same level; float32 picked a different level on about 1 image in 2000.
    """
    with jax.enable_x64(True):
        counts = counts.astype(jnp.float64)
        values = jnp.arange(counts.shape[-1], dtype=jnp.float64)
        weight1 = jnp.cumsum(counts)                      # pixels <= t
        sum1 = jnp.cumsum(counts * values)
        weight2 = jnp.cumsum(counts[::-1])[::-1]          # pixels >= t; class 2 of threshold t is >= t + 1
        sum2 = jnp.cumsum((counts * values)[::-1])[::-1]
        w1, s1 = weight1[:-1], sum1[:-1]
        w2, s2 = weight2[1:], sum2[1:]
        valid = (w1 > 0) & (w2 > 0)                       # min <= t < max, as skimage's histogram range
        mean1 = s1 / jnp.where(valid, w1, 1.0)
        mean2 = s2 / jnp.where(valid, w2, 1.0)
        variance = jnp.where(valid, (w1 * w2) * (mean1 - mean2) ** 2, -1.0)
        # The first maximum: ties go to the smallest level, as np.argmax in skimage. (Spelled with max and min:
        # argmax of float64 under vmap trips over the float32 default of its initial value.)
        level = jnp.arange(variance.shape[-1], dtype=jnp.int32)
        best = jnp.min(jnp.where(variance == jnp.max(variance), level, variance.shape[-1]))
        lowest_present = jnp.min(jnp.where(counts > 0, jnp.arange(counts.shape[-1], dtype=jnp.int32),
                                           counts.shape[-1]))
        return jnp.where(jnp.any(valid), best, lowest_present).astype(jnp.int32)


def foreground(image: jax.Array, threshold=None, levels: int = 256) -> jax.Array:
    """Binary object mask ``[H, W]`` bool of one image: ``image > threshold`` (Otsu's when None)."""
    image = jnp.asarray(image)
    check_image(image)
    check_scalar_threshold(threshold)
    if image.dtype == jnp.bool_:
        return image if threshold is None else image.astype(jnp.float32) > threshold
    if threshold is not None:
        return image > jnp.asarray(threshold, dtype=jnp.float32)
    grey = quantize(image, levels)
    return grey > otsu_threshold(grey, levels)
