"""The model zoo: an explicit name -> constructor registry over one file per family.

    from cnnlab import models
    model = models.get("resnet20", num_classes=10)            # overrides: dtype=jnp.bfloat16, ...
    variables = model.init(jax.random.key(0), x, train=False)   # x: NHWC float
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})

See docs/models.md for every name, the input sizes it accepts and its parameter count.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnlab.models import alexnet, common, densenet, googlenet, resnet, vgg
from cnnlab.models.lenet import LeNet5

# name -> constructor (a Module class or a functools.partial of one); get() adds num_classes and overrides.
_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "alexnet": alexnet.AlexNet,
    "alexnet_cifar": alexnet.AlexNetSmall,
    "vgg11": vgg.VGG11,
    "vgg13": vgg.VGG13,
    "vgg16": vgg.VGG16,
    "vgg19": vgg.VGG19,
    "vgg11_bn": vgg.VGG11BN,
    "vgg13_bn": vgg.VGG13BN,
    "vgg16_bn": vgg.VGG16BN,
    "vgg19_bn": vgg.VGG19BN,
    "googlenet": googlenet.GoogLeNet,
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet152": resnet.ResNet152,
    "resnet20": resnet.ResNet20,
    "resnet32": resnet.ResNet32,
    "resnet44": resnet.ResNet44,
    "resnet56": resnet.ResNet56,
    "resnet110": resnet.ResNet110,
    "densenet121": densenet.DenseNet121,
    "densenet169": densenet.DenseNet169,
    "densenet201": densenet.DenseNet201,
    "densenet_bc_100_12": densenet.DenseNetBC100k12,
}

# Models designed for 28x28 / 32x32 images (the others are ImageNet architectures for 224x224 inputs).
SMALL_IMAGE_MODELS = ("lenet5", "alexnet_cifar", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                      "densenet_bc_100_12")


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
    if overrides.get("dtype") is not None:
        dtype = overrides["dtype"]
        try:
            dtype = jnp.dtype(dtype)  # accepts jnp.bfloat16, np.float32 or a string such as "bfloat16"
        except TypeError as err:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}.") from err
        if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}.")
        overrides["dtype"] = dtype
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


def min_input_size(name: str, **overrides: Any) -> int:
    """Smallest image height/width (pixels) the model ``name`` accepts with these overrides."""
    return int(get(name, num_classes=1, **overrides).min_size)


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree of arrays (or jax.ShapeDtypeStruct)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)))


def _format_shapes(tree: Any) -> str:
    shapes = [str(tuple(leaf.shape)) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape")]
    return ", ".join(shapes) if shapes else "-"


def summary(name: str, input_shape: tuple[int, ...], *, num_classes: int, depth: int | None = None,
            **overrides: Any) -> str:
    """A plain-text table of the model's modules: path, module type, output shape(s), parameters.

    Nothing is computed or allocated: the model is traced with jax.eval_shape.

    Args:
      name: a registered model name.
      input_shape: NHWC shape of the input batch, e.g. (1, 32, 32, 3).
      num_classes: outputs.
      depth: show modules nested at most this deep (1: top-level layers and blocks); None shows all.
      **overrides: as for ``get``.
    Returns:
      The table, ending with the total parameter count and the batch-norm statistics count.
    """
    model = get(name, num_classes=num_classes, **overrides)
    input_shape = tuple(int(d) for d in input_shape)
    rows: list[list[Any]] = []  # [path, module type, output], in call order (parents before children)

    def record(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        row = [tuple(context.module.path), type(context.module).__name__, None]
        rows.append(row)
        row[2] = next_fun(*args, **kwargs)
        return row[2]

    def init():
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32), train=False)

    variables = jax.eval_shape(init)
    params = variables.get("params", {})

    def subtree_count(path: tuple[str, ...]) -> int:
        node: Any = params
        for key in path:
            if not hasattr(node, "get") or key not in node:
                return 0
            node = node[key]
        return count_params(node)

    lines = [f"{name} ({type(model).__name__}), input {input_shape}, {num_classes} classes",
             f"{'path':<40} {'module':<16} {'output shape':<28} {'params':>12}"]
    seen: set[tuple[str, ...]] = set()
    for path, module_type, out in rows:
        if path in seen or (depth is not None and len(path) > depth):
            continue
        seen.add(path)
        label = "/".join(path) if path else "(model)"
        lines.append(f"{label:<40} {module_type:<16} {_format_shapes(out):<28} {subtree_count(path):>12,}")
    total = count_params(params)
    stats = count_params(variables.get("batch_stats", {}))
    lines.append(f"Total parameters: {total:,}" + (f"  (+ {stats:,} batch-norm statistics)" if stats else ""))
    return "\n".join(lines)


# torchvision weights in and out (cnnlab/models/torch_weights.py), loaded on first use: importing it here would
# make `python -m cnnlab.models.torch_weights` (its command line) run a module that is already imported.
_TORCH_WEIGHTS_EXPORTS = ("from_torch", "to_torch", "save_variables", "load_variables", "TORCHVISION_MODELS")


def __getattr__(attribute: str) -> Any:
    if attribute in _TORCH_WEIGHTS_EXPORTS:
        from cnnlab.models import torch_weights

        return getattr(torch_weights, attribute)
    raise AttributeError(f"module 'cnnlab.models' has no attribute {attribute!r}")


__all__ = ["names", "get", "first_conv_kernel", "count_params", "min_input_size", "summary", "SMALL_IMAGE_MODELS",
           "from_torch", "to_torch", "save_variables", "load_variables", "TORCHVISION_MODELS"]
