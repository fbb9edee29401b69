"""Image descriptors in JAX: topological, geometric and statistical, batched and jitted.

    from cnnlab import descriptors
    values = descriptors.describe(images)           # images: [N, H, W, 1] uint8 (0..255) or float (0..1)
    values["euler_number"]                           # [N] int32; every descriptor: one value per image

``describe`` thresholds each image (``binarize``: Otsu's threshold per image unless ``threshold`` is given),
then computes every descriptor of ``topological``, ``geometric`` and ``statistical`` with ``jax.vmap`` over the
batch inside one ``jax.jit`` (compiled once per batch shape, dtype, connectivity, levels and whether a threshold
is given). Each descriptor is also a pure function of one image or mask in those modules.

Defined results: an empty foreground (also every constant image under Otsu) gives 0 components, Euler number,
holes and skeleton counts, area/perimeter/diameter 0 and NaN for the other geometric values; the statistics are
always defined. Wrong rank, dtype, connectivity, levels or threshold shape, and float images that are not
finite or not in [0, 1] (checked on the host before the jit), raise ValueError/TypeError saying what to pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnnlab.descriptors import binarize, geometric, statistical, topological
from cnnlab.descriptors.binarize import foreground, otsu_threshold, quantize
from cnnlab.descriptors.geometric import geometric as geometric_descriptors
from cnnlab.descriptors.statistical import statistics
from cnnlab.descriptors.topological import (branch_points, components, end_points, euler_number, holes, label,
                                            skeleton, skeleton_length, topological as topological_descriptors)

FAMILIES = {
    "topological": topological.NAMES,
    "geometric": geometric.NAMES,
    "statistical": statistical.NAMES,
}
NAMES = topological.NAMES + geometric.NAMES + statistical.NAMES

__all__ = ["FAMILIES", "NAMES", "branch_points", "components", "describe", "describe_image", "end_points",
           "euler_number", "foreground", "geometric_descriptors", "holes", "label", "otsu_threshold", "quantize",
           "skeleton", "skeleton_length", "statistics", "topological_descriptors"]


def describe_image(image: jax.Array, threshold=None, *, connectivity: int = 8, levels: int = 256
                   ) -> dict[str, jax.Array]:
    """All descriptors of one image ``[H, W]`` (uint8 or float in [0, 1]): a dict name -> scalar.

    Same values as ``foreground`` followed by ``topological_descriptors``, ``geometric_descriptors`` and
    ``statistics``; the grey-level histogram is computed once for Otsu and the statistics.
    """
    image = jnp.asarray(image)
    binarize.check_image(image)
    binarize.check_scalar_threshold(threshold)
    grey = quantize(image, levels)
    counts = binarize.histogram(grey, levels)
    if threshold is not None:
        mask = image > jnp.asarray(threshold, jnp.float32)
    elif image.dtype == jnp.bool_:
        mask = image
    else:
        mask = grey > binarize.otsu_from_histogram(counts)
    return {**topological_descriptors(mask, connectivity), **geometric_descriptors(mask),
            **statistical.histogram_statistics(counts)}


# Images per vectorised chunk inside describe's jit: the batch is processed chunk by chunk (lax.map) so the
# working set of the while loops stays in cache; measured faster than one vmap over 10,000 images on CPU.
CHUNK = 128


@functools.partial(jax.jit, static_argnames=("connectivity", "levels", "has_threshold"))
def _describe_batch(images, threshold, *, connectivity, levels, has_threshold):
    def one(args):
        image, image_threshold = args
        return describe_image(image, image_threshold if has_threshold else None,
                              connectivity=connectivity, levels=levels)

    count = images.shape[0]
    if count <= CHUNK:
        return jax.vmap(one)((images, threshold))
    # Pad to whole chunks so that lax.map compiles one chunk body (no separate remainder), then drop the pad.
    padded = -(-count // CHUNK) * CHUNK
    images = jnp.concatenate([images, jnp.zeros((padded - count,) + images.shape[1:], images.dtype)])
    threshold = jnp.concatenate([threshold, jnp.zeros((padded - count,), threshold.dtype)])
    values = jax.lax.map(one, (images, threshold), batch_size=CHUNK)
    return {name: value[:count] for name, value in values.items()}


def describe(images, *, connectivity: int = 8, threshold=None, levels: int = 256) -> dict[str, jax.Array]:
    """Descriptors of a batch ``[N, H, W, 1]`` (uint8 0..255 or float 0..1): dict name -> ``[N]`` array.

    Args:
      images: ``[N, H, W, 1]`` (``[N, H, W]`` is accepted too). uint8, floating point or bool.
      connectivity: 4 or 8, the foreground adjacency for components, Euler number and holes.
      threshold: None for Otsu's threshold per image; else a scalar or ``[N]`` array in image units, the
        foreground being ``image > threshold``. Any other shape raises ValueError naming the expected one.
      levels: grey levels L (2..256) for Otsu and the statistics.
    Returns:
      ``{name: [N]}`` for every name in ``NAMES``: topological int32, geometric and statistical float32.
    """
    images = images if isinstance(images, jax.Array) else np.asarray(images)
    if images.ndim == 4:
        if images.shape[-1] != 1:
            raise ValueError(f"describe needs grey images [N, H, W, 1]; got {tuple(images.shape)} with "
                             f"{images.shape[-1]} channels. Convert colour images to grey first.")
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"describe needs a batch [N, H, W, 1] (or [N, H, W]); got shape {tuple(images.shape)}. "
                         "For one image use describe_image(image).")
    binarize.check_dtype(images.dtype, name="images")
    binarize.check_float_range(images, name="images")
    topological.check_connectivity(connectivity)
    levels = binarize.check_levels(levels)
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"images must have at least one pixel; got shape {tuple(images.shape)}.")
    count = images.shape[0]
    if threshold is None:
        thresholds = jnp.zeros((count,), jnp.float32)
    else:
        shape = tuple(jnp.shape(threshold))
        if shape not in ((), (1,), (count,)):
            raise ValueError(f"threshold must be a scalar or one value per image, shape ({count},) for these "
                             f"{count} images; got shape {shape}.")
        thresholds = jnp.broadcast_to(jnp.asarray(threshold, jnp.float32).reshape(-1), (count,))
    return _describe_batch(jnp.asarray(images), thresholds, connectivity=connectivity, levels=levels,
                           has_threshold=threshold is not None)
