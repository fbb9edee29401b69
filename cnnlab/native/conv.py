"""2-D convolutions through oneDNN on CPU (``jax.ffi``), with ``lax.conv_general_dilated`` as the fallback.

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature, so it can be handed to ``nn.Conv``
(its ``conv_general_dilated`` field). It sends a convolution to the compiled oneDNN kernels
(``onednn_conv.cc``) when all of these hold, and to ``lax.conv_general_dilated`` otherwise:

  * the library is built (``python -m cnnlab.native build``; ``scripts/install.sh`` runs it) and loads;
  * JAX's default backend is the CPU;
  * float32 operands, NHWC input, HWIO kernel, NHWC output (flax's layouts), one group, no input dilation,
    non-negative padding.

Both gradients are oneDNN's too (a ``custom_vjp``), so XLA:CPU's generic convolutions and the layout transposes
around its weight gradient disappear from a training step. The values agree with ``lax`` to float32 rounding
(``tests/native/test_conv.py``). A custom call is opaque to XLA's SPMD partitioner, so ``conv_impl="auto"``
takes this path only for a computation on one device (``select``); sharded over several, it keeps ``lax``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LIBRARY = pathlib.Path(__file__).with_name("_onednn_conv.so")
TARGETS = {"fwd": "cnnlab_conv_fwd", "bwd_data": "cnnlab_conv_bwd_data", "bwd_weights": "cnnlab_conv_bwd_weights"}
NHWC_DIMENSION_NUMBERS = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))
# Set CNNLAB_NATIVE_CONV=0 to keep every convolution on lax (for comparisons), whatever the config says.
DISABLE_ENV = "CNNLAB_NATIVE_CONV"

_state: dict[str, Any] = {}


def load() -> ctypes.CDLL | None:
    """The loaded library with its FFI targets registered, or None (reason in ``why_unavailable()``)."""
    if "library" in _state:
        return _state["library"]
    library, reason = None, ""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        reason = f"{DISABLE_ENV}=0 is set"
    elif not LIBRARY.exists():
        reason = (f"{LIBRARY.name} is not built: run `python -m cnnlab.native build` (needs g++ and the "
                  "onednn-devel-cpu-gomp package, which scripts/install.sh installs)")
    else:
        try:
            library = ctypes.cdll.LoadLibrary(str(LIBRARY))
            for target in TARGETS.values():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
        except (OSError, AttributeError) as error:
            library, reason = None, f"{LIBRARY.name} does not load ({error}); rebuild it: python -m cnnlab.native build"
    _state["library"], _state["reason"] = library, reason
    return library


def available() -> bool:
    """Whether the oneDNN convolutions can run in this process (built, loaded, default backend CPU)."""
    return load() is not None and jax.default_backend() == "cpu"


def why_unavailable() -> str:
    """Why ``available()`` is False ("" when it is True)."""
    if load() is None:
        return _state["reason"]
    if jax.default_backend() != "cpu":
        return f"the default backend is {jax.default_backend()}, not cpu"
    return ""


def implementations() -> list[str]:
    """What oneDNN chose for each convolution it has run in this process: "kind|shapes: implementation"."""
    library = load()
    if library is None:
        return []
    function = library.cnnlab_conv_impls
    function.restype = ctypes.c_size_t
    size = function(None, 0)
    buffer = ctypes.create_string_buffer(size)
    function(buffer, size)
    return [line for line in buffer.value.decode().splitlines() if line]


def select(conv_impl: str, devices: int | None = None) -> str:
    """Resolve a model's ``conv_impl`` to "onednn" or "xla".

    "auto": "onednn" where it can run (``available()``) and the computation spans one device (``devices``,
    default ``jax.device_count()``), else "xla". A custom call is opaque to XLA's SPMD partitioner, which gathers
    its operands onto every device: correct but not data-parallel, so sharded runs keep ``lax``. "onednn": an
    explicit request, a clear error where the library cannot run. "xla" stays "xla".
    """
    if conv_impl == "xla":
        return "xla"
    if conv_impl not in ("auto", "onednn"):
        raise ValueError(f"conv_impl must be 'auto', 'onednn' or 'xla', got {conv_impl!r}.")
    reason = why_unavailable()
    if conv_impl == "onednn":
        if reason:
            raise RuntimeError(f"conv_impl='onednn' cannot run here: {reason}. Use conv_impl='auto' or 'xla'.")
        return "onednn"
    devices = jax.device_count() if devices is None else devices
    return "onednn" if not reason and devices == 1 else "xla"


def _explicit_padding(padding, lhs_shape, rhs_shape, strides, rhs_dilation) -> list[tuple[int, int]] | None:
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(rhs_shape[:2], rhs_dilation)]
        return [tuple(p) for p in lax.padtype_to_pads(lhs_shape[1:3], dilated, strides, padding)]
    pads = [tuple(int(v) for v in p) for p in padding]
    return pads if len(pads) == 2 and all(lo >= 0 and hi >= 0 for lo, hi in pads) else None


def _is_nhwc(dimension_numbers, lhs_ndim: int) -> bool:
    if dimension_numbers is None:
        return False
    return lax.conv_dimension_numbers((1,) * lhs_ndim, (1,) * lhs_ndim, dimension_numbers) == NHWC_DIMENSION_NUMBERS


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None) -> jax.Array:
    """``lax.conv_general_dilated``, computed by oneDNN where it can be (module docstring), by ``lax`` elsewhere."""
    strides = tuple(int(s) for s in window_strides)
    rhs_dilation = tuple(int(d) for d in rhs_dilation) if rhs_dilation is not None else (1, 1)
    pads = None
    supported = (
        load() is not None and jax.default_backend() == "cpu"
        and lhs.ndim == 4 and rhs.ndim == 4 and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
        and preferred_element_type in (None, jnp.float32) and feature_group_count == 1 and batch_group_count == 1
        and (lhs_dilation is None or all(int(d) == 1 for d in lhs_dilation))
        and _is_nhwc(dimension_numbers, lhs.ndim) and len(strides) == 2 and lhs.shape[3] == rhs.shape[2]
    )
    if supported:
        pads = _explicit_padding(padding, lhs.shape, rhs.shape, strides, rhs_dilation)
    if pads is None:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count,
                                        batch_group_count=batch_group_count, precision=precision,
                                        preferred_element_type=preferred_element_type)
    geometry = (strides, tuple(p[0] for p in pads), tuple(p[1] for p in pads), rhs_dilation)
    return _conv(lhs, rhs, geometry)


def _attributes(geometry) -> dict[str, np.ndarray]:
    strides, pad_lo, pad_hi, dilation = geometry
    return {name: np.asarray(value, np.int64) for name, value in
            (("strides", strides), ("pad_lo", pad_lo), ("pad_hi", pad_hi), ("dilation", dilation))}


def _call(target: str, out_shape, a, b, geometry) -> jax.Array:
    return jax.ffi.ffi_call(TARGETS[target], jax.ShapeDtypeStruct(out_shape, jnp.float32),
                            vmap_method="sequential")(a, b, **_attributes(geometry))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, w, geometry):
    strides, pad_lo, pad_hi, dilation = geometry
    out = jax.eval_shape(functools.partial(lax.conv_general_dilated, window_strides=strides,
                                           padding=tuple(zip(pad_lo, pad_hi)), rhs_dilation=dilation,
                                           dimension_numbers=NHWC_DIMENSION_NUMBERS), x, w)  # lax's shape rule
    return _call("fwd", out.shape, x, w, geometry)


def _conv_fwd(x, w, geometry):
    return _conv(x, w, geometry), (x, w)


def _conv_bwd(geometry, residuals, dy):
    x, w = residuals
    dx = _call("bwd_data", x.shape, dy, w, geometry)
    dw = _call("bwd_weights", w.shape, x, dy, geometry)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)
