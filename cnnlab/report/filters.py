"""The first convolution's learned filters as an image grid.

A kernel ``[kh, kw, cin, cout]`` (Flax ``nn.Conv`` layout; ``cnnlab.models.first_conv_kernel(params)`` returns it)
is drawn as one tile per output filter: an RGB tile when ``cin == 3``, otherwise a row of ``cin`` grey tiles, one
per input channel. Each filter is min-max normalised on its own (over all its input channels together, so the
relative weight of the channels stays visible) because learned filters differ a lot in scale.
"""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab.report._paths import check_png_path


def normalize_filters(kernel) -> np.ndarray:
    """Per-filter min-max normalisation to [0, 1]: ``[kh, kw, cin, cout]`` -> same shape, float32.

    A constant filter (e.g. all zero) maps to 0.5 (mid grey).
    """
    kernel = _check_kernel(kernel).astype(np.float32)
    low = kernel.min(axis=(0, 1, 2), keepdims=True)
    high = kernel.max(axis=(0, 1, 2), keepdims=True)
    span = high - low
    return np.where(span > 0, (kernel - low) / np.where(span > 0, span, 1), np.float32(0.5)).astype(np.float32)


def _check_kernel(kernel) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise ValueError(f"A convolution kernel has shape [kh, kw, cin, cout]; got rank {kernel.ndim} shape "
                         f"{kernel.shape}. Use cnnlab.models.first_conv_kernel(params) to get it.")
    if 0 in kernel.shape:
        raise ValueError(f"The kernel has an empty dimension: shape {kernel.shape}.")
    if not np.issubdtype(kernel.dtype, np.floating) and not np.issubdtype(kernel.dtype, np.integer):
        raise TypeError(f"A kernel holds real numbers; got dtype {kernel.dtype}.")
    if not np.all(np.isfinite(kernel)):
        raise ValueError("The kernel holds NaN or infinite weights; training diverged before this checkpoint.")
    return kernel


def plot_filters(kernel, out_png: str | os.PathLike, *, max_filters: int = 64, max_input_channels: int = 8,
                 title: str | None = None) -> str:
    """Draws the first ``max_filters`` filters of ``kernel`` [kh, kw, cin, cout] on a near-square grid.

    For ``cin != 3`` each filter shows its first ``max_input_channels`` input channels side by side in grey.
    Returns the PNG path.
    """
    out_png = check_png_path(out_png)
    kernel = _check_kernel(kernel)
    if max_filters < 1 or max_input_channels < 1:
        raise ValueError(f"max_filters and max_input_channels must be >= 1; got {max_filters}, {max_input_channels}.")
    kh, kw, cin, cout = kernel.shape
    shown = min(cout, max_filters)
    normalized = normalize_filters(kernel)[..., :shown]
    rgb = cin == 3
    channels = 1 if rgb else min(cin, max_input_channels)

    columns = math.ceil(math.sqrt(shown * kh / (kw * channels)))  # near-square overall picture
    columns = max(1, min(shown, columns))
    rows = math.ceil(shown / columns)
    tile_inches = float(np.clip(10.0 / max(columns * channels, rows), 0.35, 1.4))
    fig = Figure(figsize=(max(3.0, columns * channels * tile_inches * kw / kh + 0.4), rows * tile_inches + 0.8),
                 dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, columns)
    for index in range(rows * columns):
        if index >= shown:
            continue
        cell = grid[index // columns, index % columns]
        if rgb:
            axes = [fig.add_subplot(cell)]
            axes[0].imshow(normalized[:, :, :, index], interpolation="nearest")
        else:
            sub = cell.subgridspec(1, channels, wspace=0.05)
            axes = [fig.add_subplot(sub[0, c]) for c in range(channels)]
            for c, ax in enumerate(axes):
                ax.imshow(normalized[:, :, c, index], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0].set_title(str(index), fontsize=7, pad=2)
    what = "RGB" if rgb else (f"grey, {channels} of {cin} input channels each" if cin > 1 else "grey")
    heading = f"first-layer filters: {shown} of {cout}, {kh}x{kw}, {what}"
    fig.suptitle(f"{title}: {heading}" if title else heading, fontsize=10)
    fig.savefig(out_png)
    return out_png
