"""Convolution, bias, activation and p x p pooling computed as one matrix product (LeNet-5's C1-S2 and C3-S4).

Why: XLA:CPU sends every ``convolution`` to a generic Eigen kernel that is slow for a handful of channels
(LeNet-5: 1 -> 6 and 6 -> 16), and its max-pool gradient (select-and-scatter) is slow too, while matrix products
go to a tuned library (YNNPACK in jax 0.10). Measured on 2 Sapphire Rapids cores, batch 128, forward plus
gradients: C1 8.3 ms as ``lax.conv`` vs 1.4 ms as a matrix product; one whole LeNet-5 SGD step 17.0 ms with
``nn.Conv`` + ``max_pool``, 4.5 ms with this block on NHWC arrays and 3.7 ms on channel-major ones (below);
PyTorch 2.13 takes 5.9 ms for the same step (``experiments/bench/train.py`` runs the full comparison).

Layout: the block computes on channel-major, batch-minor arrays [C, H, W, N] (cuda-convnet's layout); its
NHWC interface transposes in and out, and XLA cancels the transposes between consecutive blocks. With the batch
as the contiguous axis every slice that gathers the patches, the pooling selects and the bias/ReLU run as long
vector loops over the batch; with NHWC the innermost axis would be the 1-16 channels and those loops stay
scalar (the NHWC form of this block was 20% slower).

How: a p x p pooling window over the outputs of a k x k VALID convolution reads an s x s input patch,
s = k + p - 1. One column per pooled position: a matrix ``W'`` [p*p*O, s*s*C] that holds the kernel at each of
the p*p offsets of the window, times the flattened patch, gives the window's p*p convolution outputs for all O
channels at once; pooling is then a max (or mean) over p*p contiguous groups. Patches are gathered after a
space-to-depth (the image regrouped into p x p cells of p*p*C values), so a patch is t*t unit-stride slices
(t = ceil(s / p); the patch is zero-extended to t*p and the extra rows of ``W'`` are zero), not s*s strided
ones, and the input gradient is t*t pads. The arithmetic is (t*p)^2 / k^2 times the convolution's (1.44x for
k = 5, p = 2), traded for a dense matrix product.

Max pooling with a non-decreasing activation (ReLU, identity) commutes with the bias and the activation:
pool(act(conv + b)) == act(pool(conv) + b), so they apply to the p*p times smaller pooled map. Other
combinations (tanh, average pooling) apply the activation to all p*p outputs and then pool. Either way the
result equals ``nn.Conv(padding="VALID")`` -> activation -> ``nn.{max,avg}_pool(window p, stride p)`` (on the
NHWC transpose), which drops a last row/column that does not fill a window, as VALID pooling does. The max
pooling gradient goes to the first maximum of each window, as XLA's and PyTorch's do.

Parameters are those of ``nn.Conv`` (``kernel`` [k, k, C, O], ``bias`` [O], same initialisers and names), so a
model can switch between the two forms without changing its parameters or checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": nn.relu, "tanh": jnp.tanh, "linear": lambda x: x}
# Activations for which max pooling may be applied first (non-decreasing functions).
_MONOTONE = frozenset({"relu", "linear"})
POOLS = ("max", "avg")


def to_channel_major(x: jax.Array) -> jax.Array:
    """NHWC [N, H, W, C] -> channel-major [C, H, W, N]."""
    return jnp.transpose(x, (3, 1, 2, 0))


def to_nhwc(x: jax.Array) -> jax.Array:
    """Channel-major [C, H, W, N] -> NHWC [N, H, W, C]."""
    return jnp.transpose(x, (3, 1, 2, 0))


def window_weights(kernel: jax.Array, window: int) -> jax.Array:
    """``W'`` [p*p*O, (t*p)^2 * C] for a kernel [k, k, C, O] and a p x p window, p = ``window``.

    Row (a, b, o): output channel o at offset (a, b) of the window. Column (i, j, a', b', c): input channel c at
    pixel (i*p + a', j*p + b') of the window's patch (cell (i, j) of the space-to-depth image, position (a', b')
    in it). The entry is the kernel tap (i*p + a' - a, j*p + b' - b) when that tap exists, else 0.
    """
    k, k2, cin, cout = kernel.shape
    if k != k2:
        raise ValueError(f"conv_pool: the kernel must be square, got {kernel.shape[:2]}.")
    p = window
    t = -(-(k + p - 1) // p)
    span = t * p
    # The kernel zero-padded to the span at each window offset (pads: their gradients are slices, no products).
    shifted = [jnp.pad(kernel, ((a, span - k - a), (b, span - k - b), (0, 0), (0, 0)))
               for a in range(p) for b in range(p)]
    w = jnp.stack(shifted, axis=0)  # [p*p, span, span, C, O]
    w = w.reshape(p * p, t, p, t, p, cin, cout).transpose(0, 6, 1, 3, 2, 4, 5)  # [p*p, O, i, j, a', b', C]
    return w.reshape(p * p * cout, span * span * cin)


@jax.custom_vjp
def max_over_window(y: jax.Array) -> jax.Array:
    """Max over axis 0 of ``y`` [P, ...] (the P outputs of each pooling window). The gradient goes to the first
    maximum, computed with P elementwise selects (JAX's generic ``reduce_max`` gradient also counts ties, with
    an extra reduction, and cost 4x more here)."""
    return _max_and_index(y)[0]


def _max_and_index(y: jax.Array) -> tuple[jax.Array, jax.Array]:
    best, index = y[0], jnp.zeros(y.shape[1:], jnp.int8)
    for i in range(1, y.shape[0]):
        better = y[i] > best
        best = jnp.where(better, y[i], best)
        index = jnp.where(better, jnp.int8(i), index)
    return best, index


def _max_over_window_fwd(y):
    best, index = _max_and_index(y)
    return best, (index, y.shape[0])


def _max_over_window_bwd(residuals, g):
    index, size = residuals
    zero = jnp.zeros((), g.dtype)
    return (jnp.stack([jnp.where(index == i, g, zero) for i in range(size)], axis=0),)


max_over_window.defvjp(_max_over_window_fwd, _max_over_window_bwd)


def conv_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, activation: str = "relu",
              pool: str = "max", window: int = 2, dtype: Any = None, merge_batch: bool | None = None) -> jax.Array:
    """pool(activation(conv_valid(x, kernel) + bias)) on NHWC ``x`` [N, H, W, C], ``kernel`` [k, k, C, O].

    Returns NHWC [N, (H - k + 1) // window, (W - k + 1) // window, O] in ``dtype`` (default: x's). Computed in the
    channel-major layout: between two blocks the transposes back and forth cancel (XLA removes them).
    ``merge_batch``: compute the product with the batch merged into its columns (fastest on one device) or kept
    as its own axis (keeps a batch-sharded input sharded); None: merged when the process sees one device.
    """
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"conv_pool: expected NHWC images [N, H, W, C], got shape {getattr(x, 'shape', None)}.")
    out = conv_pool_channel_major(to_channel_major(x), kernel, bias, activation=activation, pool=pool,
                                  window=window, dtype=dtype, merge_batch=merge_batch)
    return to_nhwc(out)


def conv_pool_channel_major(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, activation: str = "relu",
                            pool: str = "max", window: int = 2, dtype: Any = None,
                            merge_batch: bool | None = None) -> jax.Array:
    """``conv_pool`` on channel-major ``x`` [C, H, W, N] -> [O, (H - k + 1) // window, (W - k + 1) // window, N]."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"conv_pool: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}.")
    if pool not in POOLS:
        raise ValueError(f"conv_pool: pool must be one of {POOLS}, got {pool!r}.")
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[0] != kernel.shape[2]:
        raise ValueError(f"conv_pool: expected channel-major images [C, H, W, N] and a kernel [k, k, C, O] with the "
                         f"same C, got {x.shape} and {kernel.shape}.")
    dtype = dtype or x.dtype
    cin, height, width, batch = x.shape
    k, cout, p = kernel.shape[0], kernel.shape[3], window
    out_h, out_w = (height - k + 1) // p, (width - k + 1) // p
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv_pool: a {height}x{width} input is too small for a {k}x{k} convolution followed by "
                         f"{p}x{p} pooling.")
    t = -(-(k + p - 1) // p)
    # Crop (or zero-extend) to whole p x p cells covering every patch, then space-to-depth.
    rows, cols = p * (out_h + t - 1), p * (out_w + t - 1)
    x = x[:, :rows, :cols].astype(dtype)
    if x.shape[1] < rows or x.shape[2] < cols:
        x = jnp.pad(x, ((0, 0), (0, rows - x.shape[1]), (0, cols - x.shape[2]), (0, 0)))
    cells = x.reshape(cin, rows // p, p, cols // p, p, batch).transpose(2, 4, 0, 1, 3, 5)  # [a', b', C, I, J, N]
    patches = jnp.stack([cells[:, :, :, i:i + out_h, j:j + out_w] for i in range(t) for j in range(t)], axis=0)
    weights = window_weights(kernel, p).astype(dtype)
    if merge_batch is None:
        merge_batch = jax.device_count() == 1
    if merge_batch:
        # One plain 2-D product [p*p*O, K] x [K, out_h*out_w*N]: XLA:CPU's fastest form (1.36x PyTorch for the
        # LeNet-5 step vs 1.08x with the batch kept apart, whose gradients XLA computes via transposed copies).
        y = jnp.dot(weights, patches.reshape(-1, out_h * out_w * batch))
    else:
        # Several devices: the batch stays its own axis, so a batch-sharded input stays sharded; merged into the
        # product's columns (batch innermost) the SPMD partitioner would gather the whole batch on every device.
        y = jnp.einsum("ok,khwn->ohwn", weights, patches.reshape(-1, out_h, out_w, batch))
    y = y.reshape(p * p, cout, out_h, out_w, batch)
    act = ACTIVATIONS[activation]
    b = 0 if bias is None else bias.astype(dtype)[:, None, None, None]
    if pool == "max" and activation in _MONOTONE:
        return act(max_over_window(y) + b)
    y = act(y + b)
    return max_over_window(y) if pool == "max" else y.mean(axis=0)


class ConvPool(nn.Module):
    """``nn.Conv(features, (k, k), padding="VALID")`` -> activation -> p x p pooling of stride p, as one matmul,
    on NHWC images (a drop-in for those three layers).

    Same parameters as ``nn.Conv`` (names ``kernel``/``bias``, shapes, initialisers, float32 storage).
    """

    features: int
    kernel_size: int
    activation: str = "relu"
    pool: str = "max"
    window: int = 2
    use_bias: bool = True
    dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        return conv_pool(x, kernel, bias, activation=self.activation, pool=self.pool, window=self.window,
                         dtype=self.dtype)
