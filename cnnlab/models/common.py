"""Pieces shared by the model families: input checks, pooling that matches PyTorch, layer factories.

Conventions used by every model in cnnlab.models:
  * inputs are NHWC floating-point images [batch, height, width, channels];
  * computation runs in ``dtype`` (float32 or bfloat16), parameters are always float32;
  * the first convolution is a module named ``stem_conv`` with an ``nn.Conv``-shaped ``kernel`` [kh, kw, cin, cout]
    (``nn.Conv``, or ``conv_pool.ConvPool`` in LeNet-5; see ``first_conv_kernel``);
  * after each convolutional stage i = 1, 2, ... the model calls
    ``self.sow("intermediates", f"stage{i}", x)``;
  * logits are returned as float32 whatever the computation dtype, so losses are computed in float32.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnlab.native import conv as native_conv

STEM_CONV_NAME = "stem_conv"

# PyTorch's BatchNorm2d defaults (momentum 0.1 on the new value == 0.9 on the running average, eps 1e-5).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# PyTorch's default initialisers differ from flax's, but parameter counts and shapes do not depend on them.
# He (fan-out, normal) init for convolutions as torchvision's ResNet/VGG/DenseNet use.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def check_images(
    x: Any,
    *,
    model_name: str,
    min_size: int,
    channels: int | None = None,
    allowed_sizes: tuple[int, ...] | None = None,
    channels_from_params: bool = False,
    too_small_hint: str = "",
) -> None:
    """Raise a clear error unless ``x`` is an NHWC float batch the model can take.

    Args:
      x: the input batch, shape [batch, height, width, channels].
      model_name: used in the message.
      min_size: smallest height/width (pixels) the architecture accepts.
      channels: the channel count the stem expects, or None for any.
      allowed_sizes: if given, the only heights/widths accepted (square images).
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{model_name}: expected an array of images, got {type(x).__name__}.")
    if len(shape) != 4:
        raise ValueError(
            f"{model_name}: expected NHWC images of rank 4 [batch, height, width, channels], got shape "
            f"{tuple(shape)} (rank {len(shape)}). Add a batch axis (x[None]) or a channel axis (x[..., None])."
        )
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{model_name}: expected floating-point images, got dtype {dtype}. Convert uint8 pixels first, "
            "e.g. with cnnlab.data.pipeline.normalize."
        )
    _, height, width, num_channels = shape
    if channels is not None and num_channels != channels:
        fix = (f"these parameters were initialised on {channels}-channel images; re-initialise on "
               f"{num_channels}-channel images" if channels_from_params else
               f"build the model with input_channels={num_channels}")
        raise ValueError(
            f"{model_name}: the stem expects {channels} input channel(s), got {num_channels} "
            f"(input shape {tuple(shape)}); {fix} or feed {channels}-channel images."
        )
    if allowed_sizes is not None:
        if height != width or height not in allowed_sizes:
            sizes = " or ".join(f"{s}x{s}" for s in allowed_sizes)
            raise ValueError(
                f"{model_name}: accepts {sizes} images only (smallest accepted size {min(allowed_sizes)}x"
                f"{min(allowed_sizes)}), got {height}x{width}."
            )
    if height < min_size or width < min_size:
        raise ValueError(
            f"{model_name}: images of {height}x{width} are too small for this architecture; the smallest "
            f"size it accepts is {min_size}x{min_size}.{(' ' + too_small_hint) if too_small_hint else ''}"
        )


def stem_input_channels(module: nn.Module, x: jax.Array, path: tuple[str, ...] = (STEM_CONV_NAME,)) -> int | None:
    """The input channel count fixed by already-initialised stem parameters, or None while initialising.

    Lets ``apply`` give a clear error when images have a different channel count from those the
    parameters were initialised with (instead of a shape error deep inside lax.conv).
    """
    if module.is_initializing() or "params" not in module.variables:
        return None
    node: Any = module.variables["params"]
    for key in path:
        if key not in node:
            return None
        node = node[key]
    kernel = node.get("kernel") if hasattr(node, "get") else None
    return None if kernel is None else int(kernel.shape[2])


def checked_input(
    module: nn.Module,
    x: Any,
    *,
    model_name: str,
    min_size: int,
    input_channels: int | None,
    allowed_sizes: tuple[int, ...] | None = None,
    stem_path: tuple[str, ...] = (STEM_CONV_NAME,),
    too_small_hint: str = "",
) -> jax.Array:
    """Validate images (rank, dtype, channels, size) and cast them to ``module.dtype``."""
    channels, from_params = input_channels, False
    if channels is None:
        channels = stem_input_channels(module, x, stem_path)
        from_params = channels is not None
    check_images(x, model_name=model_name, min_size=min_size, channels=channels, allowed_sizes=allowed_sizes,
                 channels_from_params=from_params, too_small_hint=too_small_hint)
    return jnp.asarray(x, module.dtype)


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """PyTorch's AdaptiveAvgPool2d on NHWC: window i spans [floor(i*H/out), ceil((i+1)*H/out)).

    Works for any input size, including inputs smaller than the output (windows then repeat pixels).
    """
    out_h, out_w = output_size
    height, width = x.shape[1], x.shape[2]
    if (height, width) == (out_h, out_w):
        return x
    if height % out_h == 0 and width % out_w == 0:
        kh, kw = height // out_h, width // out_w
        return nn.avg_pool(x, (kh, kw), strides=(kh, kw))

    def bounds(i: int, size: int, out: int) -> tuple[int, int]:
        return (i * size) // out, -((-(i + 1) * size) // out)

    rows = []
    for i in range(out_h):
        h0, h1 = bounds(i, height, out_h)
        cols = []
        for j in range(out_w):
            w0, w1 = bounds(j, width, out_w)
            cols.append(jnp.mean(x[:, h0:h1, w0:w1, :], axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def max_pool_ceil(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
    """PyTorch's MaxPool2d(window, stride, padding, ceil_mode=True) on NHWC inputs.

    Output size per axis: ceil((size + 2*padding - window) / stride) + 1, minus one if the last window
    would start in the right padding (PyTorch's rule). Needs size + 2*padding >= window.
    """

    def pads(size: int) -> tuple[int, int]:
        out = -(-(size + 2 * padding - window) // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        needed = (out - 1) * stride + window - (size + 2 * padding)
        return padding, padding + max(needed, 0)

    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=(pads(x.shape[1]), pads(x.shape[2])))


def batch_norm(train: bool, dtype: Any, *, epsilon: float = BN_EPSILON, name: str | None = None, **kwargs) -> nn.BatchNorm:
    """BatchNorm: batch statistics when training (and running averages updated), running averages in eval."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        **kwargs,
    )


def conv(features: int, kernel: int, *, stride: int = 1, padding: int = 0, use_bias: bool = True, dtype: Any,
         name: str | None = None, kernel_init=conv_kernel_init, conv_impl: str = "xla") -> nn.Conv:
    """A square convolution with PyTorch-style symmetric integer padding, float32 parameters.

    ``conv_impl``: "xla" (``lax.conv_general_dilated``), "onednn" (``cnnlab.native.conv``: oneDNN's kernels on
    CPU; an error where they cannot run) or "auto" (oneDNN where ``native_conv.select`` says it can run: CPU,
    library built, one device; ``lax`` elsewhere). Same parameters and values either way.
    """
    use_native = native_conv.select(conv_impl) == "onednn"
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        conv_general_dilated=native_conv.conv_general_dilated if use_native else None,
        name=name,
    )


def dense(features: int, *, dtype: Any, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def classifier_output(logits: jax.Array) -> jax.Array:
    """Logits in float32 whatever the computation dtype (losses and softmax in full precision)."""
    return jnp.asarray(logits, jnp.float32)


def fields_of(constructor: Any) -> set[str]:
    """Dataclass field names a registry constructor (a class or a functools.partial of one) accepts."""
    while isinstance(constructor, functools.partial):
        constructor = constructor.func
    return {f for f in getattr(constructor, "__dataclass_fields__", {}) if f not in ("parent", "name")}
