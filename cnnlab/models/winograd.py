"""3x3 stride-1 convolutions as Winograd minimal filtering: batched matrix products instead of ``convolution``.

Why: XLA:CPU (jax 0.10) runs ``convolution`` ops, and above all their weight gradients and the layout
transposes those need, far slower than PyTorch's oneDNN kernels for the small channel counts of the CIFAR
ResNets (16-64 channels at 32x32-8x8; docs/training.md has the profile), while its matrix products go to a tuned
library. Winograd's F(m x m, 3 x 3) algorithm (Lavin & Gray 2016, "Fast algorithms for convolutional neural
networks") turns the convolution of each m x m output tile into alpha^2 = (m + 2)^2 independent channel mixes:

    V[xi, nu] = (B^T d B)[xi, nu]       input tile d (alpha x alpha, overlapping by 2) per channel
    U[xi, nu] = (G g G^T)[xi, nu]       3x3 kernel g per (input, output) channel pair
    M[xi, nu] = V[xi, nu] @ U[xi, nu]   one [tiles, C_in] x [C_in, C_out] product per position (batched)
    Y         = A^T M A                 the m x m output tile

The transforms are fixed small matrices (entries 0, +-1, +-2, ... for m = 2 and m = 4), applied as fused
elementwise sums; the alpha^2 matrix products do (m + 2)^2 / (9 m^2) of the direct method's multiplications
(0.44 for m = 2, 0.25 for m = 4).

Measured (2 Sapphire Rapids cores, jax 0.10.2, docs/training.md): slower than ``lax`` convolutions, by 2.5x
over a whole ResNet-20 training step. The products are cheap; XLA:CPU's gathers of the overlapping tiles and
the transforms around them cost 3-5x the convolution they replace. Hence an option (``CifarResNet(conv_impl=
"winograd")``), not the default: kept as the tested, exact base for a fused kernel.

Gradients (a ``custom_vjp``, so no transposed convolutions or layout changes appear):
  * input: the correlation of the output gradient with the kernel rotated by 180 degrees and its channel axes
    swapped, again a 3x3 stride-1 "same" convolution, so the same Winograd forward computes it;
  * kernel: dU[xi, nu] = V[xi, nu]^T @ dM[xi, nu] with dM = A dY A^T (non-overlapping output tiles, so no
    scatter), then dg = G^T dU G: alpha^2 batched products contracting over all tiles of the batch.

Numerics: exact algebra; in float32 the rounding differs from the direct sum by a few ulps times the transform's
growth (m = 2: relative errors around 1e-6; m = 4: a few 1e-6), tested against ``lax.conv_general_dilated``.

Only 3x3 kernels, stride 1, padding 1 ("same"), no dilation or groups; ``conv3x3`` raises a clear error for
anything else, and the models use ``nn.Conv`` wherever this does not apply (strided and 1x1 convolutions).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# (B^T, G, A^T) of F(m x m, 3 x 3) for the interpolation points 0, +-1 (m = 2) and 0, +-1, +-2 (m = 4), infinity.
_TRANSFORMS = {
    2: (
        np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0],
                  [0.5, 0.5, 0.5],
                  [0.5, -0.5, 0.5],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], np.float64),
    ),
    4: (
        np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64),
    ),
}
TILE_SIZES = tuple(sorted(_TRANSFORMS))


def _mix(coefficients: np.ndarray, terms: list[jax.Array]) -> list[jax.Array]:
    """[sum_j coefficients[i, j] * terms[j] for each row i], skipping zeros and multiplications by +-1.

    Written out term by term (the matrices are constants) so that XLA fuses a whole transform into one
    elementwise loop instead of calling a tiny matrix product.
    """
    rows = []
    for row in coefficients:
        total = None
        for c, term in zip(row, terms):
            if c == 0:
                continue
            scaled = term if c == 1 else (-term if c == -1 else term * jnp.asarray(c, term.dtype))
            total = scaled if total is None else total + scaled
        rows.append(total if total is not None else jnp.zeros_like(terms[0]))
    return rows


def _transform_2d(coefficients: np.ndarray, tiles: list[list[jax.Array]]) -> list[list[jax.Array]]:
    """out[i][j] = sum_{a, b} C[i, a] C[j, b] tiles[a][b] (separable: rows, then columns)."""
    by_rows = [_mix(coefficients, [tiles[a][b] for a in range(len(tiles))]) for b in range(len(tiles[0]))]
    # Materialise the first stage: fused into the second, each of its sums would be recomputed for every output.
    by_rows = jax.lax.optimization_barrier(by_rows)
    # by_rows[b][i] = sum_a C[i, a] tiles[a][b]
    return [_mix(coefficients, [by_rows[b][i] for b in range(len(by_rows))]) for i in range(coefficients.shape[0])]


def _tile_counts(height: int, width: int, m: int) -> tuple[int, int]:
    return -(-height // m), -(-width // m)


# Everything below works on channel-major, batch-minor arrays [C, H, W, N] (see ``to_channel_major``): every
# slice then moves whole rows of N contiguous values and every product is a plain [C_out, C_in] x [C_in, tiles*N]
# matrix product. The alpha^2 tile positions are kept as separate arrays, never stacked: XLA:CPU runs a
# concatenate of many operands ~7x slower than the same slices as separate outputs (45 vs 7 ms CPU for the
# 16 tile slices of a [16, 32, 32, 128] map), and the output tiles are interleaved back with interior padding
# (a fused pad-and-add), not with a stack and a reshape.


def _input_tiles(x: jax.Array, m: int) -> list[list[jax.Array]]:
    """[C, H, W, N] -> alpha x alpha arrays [C, tiles_h * tiles_w * N]: element (a, b) of every input tile."""
    alpha = m + 2
    channels, height, width, n = x.shape
    th, tw = _tile_counts(height, width, m)
    # "same" padding of 1, plus whatever makes the last tile whole.
    xp = jnp.pad(x, ((0, 0), (1, th * m + 1 - height), (1, tw * m + 1 - width), (0, 0)))
    return [[xp[:, a:a + th * m:m, b:b + tw * m:m, :].reshape(channels, th * tw * n) for b in range(alpha)]
            for a in range(alpha)]


def _kernel_transform(kernel: jax.Array, m: int) -> list[list[jax.Array]]:
    """[3, 3, C_in, C_out] -> alpha x alpha arrays U [C_in, C_out]."""
    return _transform_2d(_TRANSFORMS[m][1], [[kernel[a, b] for b in range(3)] for a in range(3)])


def _interleave(tiles: list[list[jax.Array]], shape: tuple[int, int, int, int], m: int) -> jax.Array:
    """m x m arrays [C, tiles_h * tiles_w * N] (element (i, j) of every output tile) -> [C, H, W, N]."""
    channels, height, width, n = shape
    th, tw = _tile_counts(height, width, m)
    zero = jnp.zeros((), tiles[0][0].dtype)
    total = None
    for i in range(m):
        for j in range(m):
            part = jax.lax.pad(tiles[i][j].reshape(channels, th, tw, n), zero,
                               ((0, 0, 0), (i, m - 1 - i, m - 1), (j, m - 1 - j, m - 1), (0, 0, 0)))
            total = part if total is None else total + part
    return total[:, :height, :width, :]


def _output_tiles(dy: jax.Array, m: int) -> list[list[jax.Array]]:
    """[C, H, W, N] -> m x m arrays [C, tiles_h * tiles_w * N] (the inverse of ``_interleave``)."""
    channels, height, width, n = dy.shape
    th, tw = _tile_counts(height, width, m)
    dy = jnp.pad(dy, ((0, 0), (0, th * m - height), (0, tw * m - width), (0, 0)))
    return [[dy[:, i::m, j::m, :].reshape(channels, th * tw * n) for j in range(m)] for i in range(m)]


def _forward(x: jax.Array, kernel: jax.Array, m: int) -> tuple[jax.Array, list[list[jax.Array]]]:
    """Channel-major "same" 3x3 convolution; also returns the transformed input tiles V (the kernel gradient's)."""
    v = _transform_2d(_TRANSFORMS[m][0], _input_tiles(x, m))
    u = _kernel_transform(kernel.astype(x.dtype), m)
    alpha = m + 2
    products = [[jnp.einsum("cd,ck->dk", u[i][j], v[i][j]) for j in range(alpha)] for i in range(alpha)]
    y = _transform_2d(_TRANSFORMS[m][2], products)
    return _interleave(y, (kernel.shape[3],) + x.shape[1:], m), v


def _check(x: jax.Array, kernel: jax.Array, m: int, layout: str) -> None:
    if m not in _TRANSFORMS:
        raise ValueError(f"winograd: tile_size must be one of {TILE_SIZES}, got {m!r}.")
    if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
        raise ValueError(f"winograd: needs a [3, 3, C_in, C_out] kernel, got shape {tuple(kernel.shape)}; "
                         "use lax.conv_general_dilated (nn.Conv) for other kernel sizes.")
    channel_axis = 0 if layout == "CHWN" else 3
    if x.ndim != 4 or x.shape[channel_axis] != kernel.shape[2]:
        raise ValueError(f"winograd: needs {layout} input with {kernel.shape[2]} channels (the kernel's C_in) on "
                         f"axis {channel_axis}, got shape {tuple(x.shape)}.")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3x3(x: jax.Array, kernel: jax.Array, m: int) -> jax.Array:
    return _forward(x, kernel, m)[0]


def _conv3x3_fwd(x, kernel, m):
    y, v = _forward(x, kernel, m)
    return y, (v, kernel)


def _conv3x3_bwd(m, residuals, dy):
    v, kernel = residuals
    # Input gradient: "same" correlation with the kernel rotated by 180 degrees, C_in and C_out swapped.
    rotated = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    dx = _forward(dy, rotated.astype(dy.dtype), m)[0]
    # Kernel gradient: dM = A dY A^T per tile, dU = V dM^T per position, dg = G^T dU G.
    dm = _transform_2d(_TRANSFORMS[m][2].T, _output_tiles(dy, m))
    alpha = m + 2
    # Sums over every tile of the batch: accumulate in at least float32 (bfloat16 activations).
    accumulate = jnp.promote_types(dm[0][0].dtype, jnp.float32)
    du = [[jnp.einsum("ck,dk->cd", v[i][j], dm[i][j], preferred_element_type=accumulate) for j in range(alpha)]
          for i in range(alpha)]
    dg = _transform_2d(_TRANSFORMS[m][1].T, du)
    dkernel = jnp.stack([jnp.stack(row) for row in dg]).astype(kernel.dtype)
    return dx, dkernel


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def to_channel_major(x: jax.Array) -> jax.Array:
    """NHWC [N, H, W, C] -> channel-major [C, H, W, N]."""
    return jnp.transpose(x, (3, 1, 2, 0))


def to_nhwc(x: jax.Array) -> jax.Array:
    """Channel-major [C, H, W, N] -> NHWC [N, H, W, C]."""
    return jnp.transpose(x, (3, 1, 2, 0))


def conv3x3_channel_major(x: jax.Array, kernel: jax.Array, *, stride: int = 1, tile_size: int = 4) -> jax.Array:
    """3x3, padding 1 convolution of channel-major ``x`` [C_in, H, W, N] with ``kernel`` [3, 3, C_in, C_out].

    Returns [C_out, H', W', N]. Equals ``lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
    dimension_numbers=("CHWN", "HWIO", "CHWN"))`` up to float rounding, gradients included. ``stride`` 2 takes
    every other output of the stride-1 convolution (what a strided 3x3 convolution with padding 1 computes; 4x
    the arithmetic, used only for the two stage-entry convolutions of the CIFAR ResNets). ``tile_size`` is m of
    F(m x m, 3 x 3): 2 or 4 (fewer multiplications, slightly larger rounding).
    """
    _check(x, kernel, tile_size, "CHWN")
    if stride not in (1, 2):
        raise ValueError(f"winograd: stride must be 1 or 2, got {stride!r}.")
    y = _conv3x3(x, kernel, tile_size)
    return y if stride == 1 else y[:, ::stride, ::stride, :]


def conv3x3(x: jax.Array, kernel: jax.Array, *, tile_size: int = 4) -> jax.Array:
    """NHWC form of ``conv3x3_channel_major`` (stride 1): [N, H, W, C_in] -> [N, H, W, C_out].

    Equals ``nn.Conv(C_out, (3, 3), padding=1, use_bias=False)`` up to float rounding. The two transposes cost
    about as much as the convolution on XLA:CPU, so models that chain these keep their activations channel-major.
    """
    _check(x, kernel, tile_size, "NHWC")
    return to_nhwc(_conv3x3(to_channel_major(x), kernel, tile_size))


class WinogradConv(nn.Module):
    """Drop-in for ``nn.Conv(features, (3, 3), strides, padding=1, use_bias=...)``: same parameters, names, init.

    Parameters: ``kernel`` [3, 3, C_in, features] (float32, ``kernel_init``) and, with ``use_bias``, ``bias``
    [features] (zeros), exactly as ``nn.Conv`` creates them, so checkpoints move between the two freely.
    ``layout`` "NHWC" takes and returns [N, H, W, C] (transposing around the channel-major computation);
    "CHWN" takes and returns channel-major [C, H, W, N] (for models that stay channel-major between layers).
    """

    features: int
    strides: int = 1
    use_bias: bool = False
    tile_size: int = 4
    layout: str = "NHWC"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.layout not in ("NHWC", "CHWN"):
            raise ValueError(f"WinogradConv: layout must be 'NHWC' or 'CHWN', got {self.layout!r}.")
        in_features = x.shape[-1] if self.layout == "NHWC" else x.shape[0]
        kernel = self.param("kernel", self.kernel_init, (3, 3, in_features, self.features), self.param_dtype)
        x = jnp.asarray(x, self.dtype)
        if self.layout == "NHWC":
            x = to_channel_major(x)
        y = conv3x3_channel_major(x, jnp.asarray(kernel, self.dtype), stride=self.strides, tile_size=self.tile_size)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + jnp.asarray(bias, self.dtype)[:, None, None, None]
        return to_nhwc(y) if self.layout == "NHWC" else y
