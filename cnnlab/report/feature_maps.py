"""Feature maps of one test image after each convolution stage.

Every cnnlab model sows its activations after each stage (``self.sow("intermediates", f"stage{i}", x)``), so

    _, state = model.apply(variables, image[None], train=False, mutable=["intermediates"])
    stages = stages_from_intermediates(state["intermediates"])
    plot_feature_maps(stages, "feature_maps.png", image=image)

draws the input on the first row and the first channels of each stage on the following rows, each channel
min-max normalised on its own (activations differ in scale from channel to channel).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab.report._paths import check_png_path


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def stages_from_intermediates(intermediates: Mapping) -> dict[str, np.ndarray]:
    """Flattens Flax ``intermediates`` into ``{stage name: array}`` in natural order (stage2 before stage10).

    Nested module collections are joined with "/"; ``sow`` stores tuples of the sown values, and the last value
    of each tuple is taken. Leaves that are not arrays are rejected.
    """
    if not isinstance(intermediates, Mapping):
        raise TypeError(f"intermediates must be a mapping (the 'intermediates' collection); got "
                        f"{type(intermediates).__name__}.")
    stages: dict[str, np.ndarray] = {}

    def visit(prefix: str, node):
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(f"{prefix}/{key}" if prefix else str(key), value)
        elif isinstance(node, (tuple, list)):
            if not node:
                raise ValueError(f"intermediates entry {prefix!r} is an empty tuple.")
            stages[prefix] = np.asarray(node[-1])
        else:
            stages[prefix] = np.asarray(node)

    visit("", intermediates)
    if not stages:
        raise ValueError("intermediates is empty: apply the model with mutable=['intermediates'] to collect stages.")
    return {name: stages[name] for name in sorted(stages, key=_natural_key)}


def _as_hwc(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"{name}: expected one image, [1, H, W, C]; got a batch of {array.shape[0]} "
                             f"(shape {array.shape}). Index the image you want first.")
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"{name}: expected [H, W, C] or [1, H, W, C]; got rank {array.ndim} shape {array.shape}. "
                         "Only convolution stages (spatial maps) can be drawn, not flattened or dense outputs.")
    if 0 in array.shape:
        raise ValueError(f"{name}: empty array of shape {array.shape}.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == np.bool_):
        raise TypeError(f"{name}: expected real values; got dtype {array.dtype}.")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: holds NaN or infinite values.")
    return array


def _min_max(array: np.ndarray, axis) -> np.ndarray:
    low = array.min(axis=axis, keepdims=True)
    span = array.max(axis=axis, keepdims=True) - low
    return np.where(span > 0, (array - low) / np.where(span > 0, span, 1), 0.0)


def plot_feature_maps(feature_maps: Mapping[str, object], out_png: str | os.PathLike, *, image=None,
                      max_channels: int = 8, title: str | None = None) -> str:
    """Draws the input (if given) and the first ``max_channels`` channels of every stage, one row per stage.

    Args:
      feature_maps: {stage name: [H, W, C] or [1, H, W, C]} in the order to draw (dict order).
      out_png: where to write the PNG.
      image: the input image, [H, W, C] or [1, H, W, C] with C 1 (grey) or 3 (RGB), uint8 or float (min-max
        normalised for display).
      max_channels: how many channels of each stage to show.
    Returns:
      The PNG path.
    """
    out_png = check_png_path(out_png)
    if not isinstance(feature_maps, Mapping):
        raise TypeError(f"feature_maps must be a dict of stage name -> array; got {type(feature_maps).__name__}.")
    if not feature_maps:
        raise ValueError("feature_maps is empty: pass at least one stage (see stages_from_intermediates).")
    if max_channels < 1:
        raise ValueError(f"max_channels must be >= 1, got {max_channels}.")
    stages = {str(name): _as_hwc(f"stage {name!r}", array) for name, array in feature_maps.items()}
    rows = []
    if image is not None:
        picture = _as_hwc("image", image)
        if picture.shape[-1] not in (1, 3):
            raise ValueError(f"image: expected 1 (grey) or 3 (RGB) channels; got {picture.shape[-1]}.")
        rows.append(("input", picture))
    rows.extend(stages.items())

    columns = max(min(a.shape[-1], max_channels) for _, a in stages.items())
    fig = Figure(figsize=(1.2 * columns + 1.6, 1.35 * len(rows) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(len(rows), columns, squeeze=False))
    for r, (name, array) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "input" and image is not None and r == 0:
                if c == 0:
                    picture = _min_max(array, axis=None)
                    if array.shape[-1] == 3:
                        ax.imshow(picture, interpolation="nearest")
                    else:
                        ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                    ax.set_title(f"{array.shape[0]}x{array.shape[1]}x{array.shape[2]}", fontsize=7, pad=2)
                else:
                    ax.axis("off")
            elif c < min(array.shape[-1], max_channels):
                ax.imshow(_min_max(array[..., c], axis=None), cmap="viridis", vmin=0, vmax=1,
                          interpolation="nearest")
                if c == 0:
                    ax.set_title(f"{array.shape[0]}x{array.shape[1]}x{array.shape[2]}", fontsize=7, pad=2)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, fontsize=9)
    heading = f"feature maps: first {columns} channels per stage"
    fig.suptitle(f"{title}: {heading}" if title else heading, fontsize=10)
    fig.savefig(out_png)
    return out_png
