"""The model zoo: an explicit name -> constructor registry over one file per family.

    from cnnlab import models
    model = models.get("resnet20", num_classes=10)            # overrides: dtype=jnp.bfloat16, ...
    variables = model.init(jax.random.key(0), x, train=False)   # x: NHWC float
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})

See docs/models.md for every name, the input sizes it accepts and its parameter count.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnlab.models import common
from cnnlab.models.lenet import LeNet5

# name -> constructor (a Module class or a functools.partial of one); get() adds num_classes and overrides.
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
}


def names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def _constructor(name: str) -> Callable[..., nn.Module]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(names())}.")
    return _REGISTRY[name]


def get(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
    """The Linen module registered as ``name``, built for ``num_classes`` outputs.

    Args:
      name: one of ``names()``.
      num_classes: number of output classes (positive int).
      **overrides: module attributes to change, e.g. ``dtype=jnp.bfloat16`` (computation dtype; parameters
        stay float32), ``style="original"`` (lenet5), ``small_input=True`` (ImageNet stems), ...
    Raises:
      ValueError for an unknown name or a bad num_classes; TypeError for an override the model lacks.
    """
    constructor = _constructor(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    accepted = common.fields_of(constructor) - {"num_classes"}
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise TypeError(f"Model {name!r} has no option(s) {unknown}. Accepted overrides: {sorted(accepted)}.")
    dtype = overrides.get("dtype")
    if dtype is not None and jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                                                     jnp.dtype(jnp.float16)):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}.")
    return constructor(num_classes=int(num_classes), **overrides)


def first_conv_kernel(params: Any) -> jax.Array:
    """The first convolution's kernel [kh, kw, cin, cout] (for filter plots).

    Every model names its first convolution ``stem_conv``; ``params`` may be the "params" collection or the
    whole variables dict. Key order does not matter (it survives jax.tree round trips that sort keys).
    """
    if isinstance(params, dict) and "params" in params and common.STEM_CONV_NAME not in params:
        params = params["params"]

    def find(node: Any) -> Any:
        if not hasattr(node, "items"):
            return None
        if common.STEM_CONV_NAME in node and hasattr(node[common.STEM_CONV_NAME], "items"):
            return node[common.STEM_CONV_NAME]["kernel"]
        for value in node.values():
            found = find(value)
            if found is not None:
                return found
        return None

    kernel = find(params)
    if kernel is None:
        raise ValueError(
            f"No convolution named {common.STEM_CONV_NAME!r} in these parameters; pass the 'params' of a "
            "cnnlab.models model."
        )
    if kernel.ndim != 4:
        raise ValueError(f"Expected a 4-D conv kernel [kh, kw, cin, cout], got shape {kernel.shape}.")
    return kernel


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or jax.ShapeDtypeStruct)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)))


__all__ = ["names", "get", "first_conv_kernel", "count_params"]
