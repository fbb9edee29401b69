"""torchvision weights in and out of cnnlab's ImageNet-size models, exactly, without torch at run time.

    from cnnlab import models
    variables = models.from_torch("resnet50", state_dict)     # state_dict: name -> numpy array or torch tensor
    logits = models.get("resnet50", num_classes=1000).apply(variables, images_nhwc, train=False)
    state_dict = models.to_torch("resnet50", variables)      # name -> numpy array, torchvision's names

Models: every ImageNet-size model of the zoo (``TORCHVISION_MODELS``): alexnet, vgg11..19 and their ``_bn``
variants, googlenet, resnet18..152, densenet121..201, each with torchvision's module names and ImageNet
layout (not the ``small_input`` stems). The class count and the input channel count are read from the state
dict (its classifier and first convolution), so a 10-class head or a 1-channel stem converts as well.

What is mapped, tensor by tensor:
  * convolution weight [out, in, kh, kw] (OIHW) -> ``kernel`` [kh, kw, in, out] (HWIO); bias -> ``bias``;
  * linear weight [out, in] -> ``kernel`` [in, out]; bias -> ``bias``. The first dense layer of VGG and AlexNet
    (and of GoogLeNet's auxiliary heads) reads the flattened pooled feature map: torch flattens it as
    (C, H, W), cnnlab's NHWC models as (H, W, C), so its input rows are permuted (7x7x512 for VGG, 6x6x256
    for AlexNet, 4x4x128 for the auxiliary heads);
  * BatchNorm2d weight/bias -> params ``scale``/``bias``; running_mean/running_var -> batch_stats ``mean``/``var``;
    ``num_batches_tracked`` is accepted and dropped on load (cnnlab's BN uses a fixed momentum, which is all
    torch uses it for) and written as 0 by ``to_torch``;
  * GoogLeNet: the BN epsilon is 0.001 in both (torchvision's BasicConv2d; cnnlab.models.googlenet). The
    auxiliary heads ``aux1.*``/``aux2.*`` (present in ``googlenet(weights=None)`` and in torchvision's weights
    file) map to cnnlab's ``aux1``/``aux2`` (the model built with ``aux_logits=True``); pass
    ``aux_logits=False`` to drop them. torchvision's ``transform_input`` is not a weight and cnnlab's GoogLeNet has
    no such step: torchvision turns it on with its pretrained weights, which then expect inputs normalised as
    (x - 0.5) / 0.5 per channel; normalise the images that way (or fine-tune) when using those weights.

Every tensor of the state dict is used exactly once and every Flax leaf is filled exactly once, with shapes
checked: the first missing, unexpected or misshapen tensor is named in a ValueError.

Converted files (``save_variables`` / ``load_variables``): one ``.npz`` holding every leaf under its path
("params/stage1_block1/conv1/kernel", "batch_stats/..."), float32, plus a JSON record "__meta__"
({"format": "cnnlab-variables", "version": 1, "model": ..., "num_classes": ..., "input_channels": ...,
"source": ...}). Read with ``numpy.load(allow_pickle=False)``: nothing in the file is executed.

Command line (torch needed only to read a ``.pth``; a ``.npz`` of torchvision-named arrays works without):

    python -m cnnlab.models.torch_weights convert --model=resnet18 --torch_file=resnet18.pth --out=resnet18.npz
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT_NAME = "cnnlab-variables"
FORMAT_VERSION = 1
META_KEY = "__meta__"

TORCHVISION_MODELS = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
                      "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121",
                      "densenet169", "densenet201")

# torchvision's first convolution and classifier of each family: they fix the input channels and the classes.
_STEM_AND_HEAD = {
    "alexnet": ("features.0", "classifier.6"),
    "vgg": ("features.0", "classifier.6"),
    "googlenet": ("conv1.conv", "fc"),
    "resnet": ("conv1", "fc"),
    "densenet": ("features.conv0", "classifier"),
}

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One torch module <-> one Flax module.

    kind: "conv" (weight [+ bias]), "dense" (weight + bias), "bn" (weight, bias, running stats).
    torch: the torch module's name ("layer1.0.conv1"); flax: the Flax module's path (("stage1_block1", "conv1")).
    chw: for a dense layer fed by a flattened (C, H, W) map in torch: (H, W) of that map, else None.
    """

    kind: str
    torch: str
    flax: Path
    bias: bool = True
    chw: tuple[int, int] | None = None


def family(name: str) -> str:
    """The model family of a torchvision model name ("resnet50" -> "resnet"), or a ValueError."""
    if name not in TORCHVISION_MODELS:
        raise ValueError(f"No torchvision mapping for model {name!r}: torchvision weights convert for "
                         f"{', '.join(TORCHVISION_MODELS)} (the ImageNet-size models).")
    for prefix in ("alexnet", "vgg", "googlenet", "resnet", "densenet"):
        if name.startswith(prefix):
            return prefix
    raise AssertionError(name)


def stem_and_head(name: str) -> tuple[str, str]:
    """torchvision's module names of the first convolution and of the classifier of model ``name``."""
    return _STEM_AND_HEAD[family(name)]


def head_path(name: str) -> Path:
    """The Flax path of the classifier (the layer a fine-tuning run replaces when the class count differs)."""
    return {"alexnet": ("fc3",), "vgg": ("fc3",), "googlenet": ("fc",), "resnet": ("fc",),
            "densenet": ("classifier",)}[family(name)]


def _layers(name: str, model, flax_params: Mapping) -> list[_Layer]:
    """Every layer of torchvision's ``name`` in its state-dict order, paired with the Flax module path."""
    fam = family(name)
    layers: list[_Layer] = []
    if fam == "resnet":
        layers += [_Layer("conv", "conv1", ("stem_conv",), bias=False), _Layer("bn", "bn1", ("stem_bn",))]
        convs = 3 if model.block_cls.expansion == 4 else 2
        for i, num_blocks in enumerate(model.stage_sizes):
            for j in range(num_blocks):
                torch_block, flax_block = f"layer{i + 1}.{j}", f"stage{i + 1}_block{j + 1}"
                for k in range(1, convs + 1):
                    layers += [_Layer("conv", f"{torch_block}.conv{k}", (flax_block, f"conv{k}"), bias=False),
                               _Layer("bn", f"{torch_block}.bn{k}", (flax_block, f"bn{k}"))]
                if "downsample_conv" in flax_params.get(flax_block, {}):
                    layers += [_Layer("conv", f"{torch_block}.downsample.0", (flax_block, "downsample_conv"),
                                      bias=False),
                               _Layer("bn", f"{torch_block}.downsample.1", (flax_block, "downsample_bn"))]
        layers.append(_Layer("dense", "fc", ("fc",)))
    elif fam == "vgg":
        index, conv_number = 0, 0
        for value in model.config:
            if value == "M":
                index += 1
                continue
            conv_number += 1
            layers.append(_Layer("conv", f"features.{index}",
                                 ("stem_conv",) if conv_number == 1 else (f"conv{conv_number}",)))
            if model.batch_norm:
                layers.append(_Layer("bn", f"features.{index + 1}", (f"bn{conv_number}",)))
            index += 3 if model.batch_norm else 2  # conv [BN] ReLU
        pooled = (model.pooled_size, model.pooled_size)
        layers += [_Layer("dense", "classifier.0", ("fc1",), chw=pooled), _Layer("dense", "classifier.3", ("fc2",)),
                   _Layer("dense", "classifier.6", ("fc3",))]
    elif fam == "alexnet":
        for index, flax_name in zip((0, 3, 6, 8, 10), ("stem_conv", "conv2", "conv3", "conv4", "conv5")):
            layers.append(_Layer("conv", f"features.{index}", (flax_name,)))
        layers += [_Layer("dense", "classifier.1", ("fc1",), chw=(6, 6)), _Layer("dense", "classifier.4", ("fc2",)),
                   _Layer("dense", "classifier.6", ("fc3",))]
    elif fam == "googlenet":
        def basic(torch_name: str, flax_path: Path, conv_name: str = "conv") -> list[_Layer]:
            return [_Layer("conv", f"{torch_name}.conv", (*flax_path, conv_name), bias=False),
                    _Layer("bn", f"{torch_name}.bn", (*flax_path, "bn"))]

        def aux(number: int) -> list[_Layer]:
            return basic(f"aux{number}.conv", (f"aux{number}", "conv")) + [
                _Layer("dense", f"aux{number}.fc1", (f"aux{number}", "fc1"), chw=(4, 4)),
                _Layer("dense", f"aux{number}.fc2", (f"aux{number}", "fc2"))]

        layers += basic("conv1", ("conv1",), "stem_conv") + basic("conv2", ("conv2",)) + basic("conv3", ("conv3",))
        branches = (("branch1", "branch1"), ("branch2.0", "branch2_reduce"), ("branch2.1", "branch2"),
                    ("branch3.0", "branch3_reduce"), ("branch3.1", "branch3"), ("branch4.1", "branch4"))
        for block in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
            for torch_branch, flax_branch in branches:
                layers += basic(f"inception{block}.{torch_branch}", (f"inception{block}", flax_branch))
        if "aux1" in flax_params:  # torchvision's state-dict order: aux1, aux2 after the inceptions, then fc
            layers += aux(1) + aux(2)
        layers.append(_Layer("dense", "fc", ("fc",)))
    elif fam == "densenet":
        layers += [_Layer("conv", "features.conv0", ("stem_conv",), bias=False),
                   _Layer("bn", "features.norm0", ("stem_bn",))]
        for i, num_layers in enumerate(model.block_config):
            for j in range(num_layers):
                torch_layer, flax_layer = f"features.denseblock{i + 1}.denselayer{j + 1}", f"block{i + 1}_layer{j + 1}"
                layers += [_Layer("bn", f"{torch_layer}.norm1", (flax_layer, "norm1")),
                           _Layer("conv", f"{torch_layer}.conv1", (flax_layer, "conv1"), bias=False),
                           _Layer("bn", f"{torch_layer}.norm2", (flax_layer, "norm2")),
                           _Layer("conv", f"{torch_layer}.conv2", (flax_layer, "conv2"), bias=False)]
            if i != len(model.block_config) - 1:
                layers += [_Layer("bn", f"features.transition{i + 1}.norm", (f"transition{i + 1}", "norm")),
                           _Layer("conv", f"features.transition{i + 1}.conv", (f"transition{i + 1}", "conv"),
                                  bias=False)]
        layers += [_Layer("bn", "features.norm5", ("final_norm",)), _Layer("dense", "classifier", ("classifier",))]
    return layers


def _to_numpy(value: Any, key: str) -> np.ndarray:
    """A state-dict value (numpy array, torch tensor, anything with ``__array__``) as a numpy array."""
    if hasattr(value, "detach"):  # a torch tensor: no torch import needed to read it
        value = value.detach()
        if hasattr(value, "cpu"):
            value = value.cpu()
    try:
        array = value.numpy() if hasattr(value, "numpy") and not isinstance(value, np.ndarray) else np.asarray(value)
    except (TypeError, RuntimeError) as err:
        raise TypeError(f"state_dict[{key!r}] ({type(value).__name__}) cannot be read as an array: {err}") from err
    if array.dtype == object:
        raise TypeError(f"state_dict[{key!r}] is not a numeric array (got {type(value).__name__}).")
    return array


def _tree_get(tree: Mapping, path: Path) -> Any:
    node: Any = tree
    for key in path:
        node = node[key]
    return node


def _tree_set(tree: dict, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _leaf_paths(tree: Mapping, prefix: Path = ()) -> list[Path]:
    paths = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            paths += _leaf_paths(value, (*prefix, key))
        else:
            paths.append((*prefix, key))
    return paths


def _abstract_variables(name: str, *, num_classes: int, input_channels: int, aux_logits: bool):
    """(model, {"params": shapes, "batch_stats": shapes}) of cnnlab's ``name``: shapes only, nothing computed."""
    from cnnlab import models  # here, not at import: cnnlab.models imports this module

    overrides = {"aux_logits": True} if aux_logits else {}
    model = models.get(name, num_classes=num_classes, **overrides)
    size = max(int(model.min_size), 64)  # parameter shapes do not depend on it (adaptive pools)
    images = jnp.zeros((1, size, size, input_channels), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
    variables = jax.tree.map(lambda leaf: tuple(leaf.shape), dict(variables))
    return model, {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}


# torch tensor suffix -> (Flax collection, leaf name) for each layer kind.
def _tensors(layer: _Layer) -> list[tuple[str, str, str]]:
    if layer.kind == "bn":
        return [("weight", "params", "scale"), ("bias", "params", "bias"), ("running_mean", "batch_stats", "mean"),
                ("running_var", "batch_stats", "var")]
    return [("weight", "params", "kernel")] + ([("bias", "params", "bias")] if layer.bias else [])


def _to_flax_layout(array: np.ndarray, layer: _Layer, suffix: str) -> np.ndarray:
    if suffix != "weight" or layer.kind == "bn":
        return array
    if layer.kind == "conv":
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if layer.chw is not None:  # rows of torch's (C, H, W) flattening -> cnnlab's (H, W, C) flattening
        height, width = layer.chw
        out_features = array.shape[0]
        channels = array.shape[1] // (height * width)
        array = array.reshape(out_features, channels, height, width).transpose(2, 3, 1, 0)
        return array.reshape(height * width * channels, out_features)
    return array.T


def _to_torch_layout(array: np.ndarray, layer: _Layer, suffix: str) -> np.ndarray:
    if suffix != "weight" or layer.kind == "bn":
        return array
    if layer.kind == "conv":
        return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if layer.chw is not None:
        height, width = layer.chw
        in_features, out_features = array.shape
        channels = in_features // (height * width)
        array = array.reshape(height, width, channels, out_features).transpose(3, 2, 0, 1)
        return array.reshape(out_features, channels * height * width)
    return array.T


def _torch_shape(flax_shape: tuple[int, ...], layer: _Layer, suffix: str) -> tuple[int, ...]:
    return _to_torch_layout(np.zeros(flax_shape, np.int8), layer, suffix).shape


def from_torch(name: str, state_dict: Mapping[str, Any], *, aux_logits: bool | None = None) -> dict:
    """torchvision's ``state_dict`` of model ``name`` -> cnnlab variables {"params": ..., "batch_stats": ...}.

    Args:
      name: one of ``TORCHVISION_MODELS`` (cnnlab's registry name, which is also torchvision's).
      state_dict: torchvision tensor name -> array ([out, in, kh, kw] convolutions, [out, in] linear layers, ...):
        numpy arrays, torch tensors or anything with ``__array__``. The class count and the input channel count
        are taken from the classifier and the first convolution.
      aux_logits: googlenet only: None keeps the auxiliary heads when the state dict has them (cnnlab model
        built with ``aux_logits=True``); False drops ``aux1.*``/``aux2.*``; True requires them.
    Returns:
      Nested dicts of float32 numpy arrays, cnnlab's layout (HWIO kernels, NHWC flattening); "batch_stats" only
      for models with batch norm, as ``model.init`` gives. Apply them with
      ``models.get(name, num_classes=K[, aux_logits=True]).apply(variables, x, train=False)``.
    Raises:
      ValueError naming the first missing, unexpected or misshapen tensor; TypeError for a non-array value.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"from_torch: state_dict must be a mapping of tensor names to arrays, got "
                        f"{type(state_dict).__name__}. Pass model.state_dict() or torch.load(file).")
    stem, head = stem_and_head(name)
    keys = list(state_dict)
    for needed in (f"{stem}.weight", f"{head}.weight"):
        if needed not in state_dict:
            hint = ""
            if any(isinstance(k, str) and k.startswith("module.") for k in keys):
                hint = " Its names start with 'module.' (a DataParallel model): strip that prefix first."
            raise ValueError(f"from_torch({name!r}): missing tensor {needed!r}; is this torchvision's {name} state "
                             f"dict? First names: {keys[:3]}.{hint}")
    stem_weight = _to_numpy(state_dict[f"{stem}.weight"], f"{stem}.weight")
    head_weight = _to_numpy(state_dict[f"{head}.weight"], f"{head}.weight")
    if stem_weight.ndim != 4 or head_weight.ndim != 2:
        raise ValueError(f"from_torch({name!r}): {stem}.weight must be 4-D [out, in, kh, kw] and {head}.weight "
                         f"2-D [classes, features]; got shapes {stem_weight.shape} and {head_weight.shape}.")
    has_aux = any(isinstance(k, str) and (k.startswith("aux1.") or k.startswith("aux2.")) for k in keys)
    if family(name) != "googlenet" and aux_logits is not None:
        raise ValueError(f"from_torch({name!r}): aux_logits applies to googlenet only.")
    if aux_logits is True and not has_aux:
        raise ValueError(f"from_torch({name!r}): aux_logits=True but the state dict has no aux1.*/aux2.* tensors.")
    keep_aux = has_aux if aux_logits is None else aux_logits
    dropped = {k for k in keys if keep_aux is False and has_aux and (k.startswith("aux1.") or k.startswith("aux2."))}

    model, shapes = _abstract_variables(name, num_classes=int(head_weight.shape[0]),
                                        input_channels=int(stem_weight.shape[1]), aux_logits=keep_aux)
    variables: dict = {"params": {}, "batch_stats": {}}
    used: set[str] = set()
    filled: set[Path] = set()
    for layer in _layers(name, model, shapes["params"]):
        for suffix, collection, leaf in _tensors(layer):
            key = f"{layer.torch}.{suffix}"
            flax_path = (collection, *layer.flax, leaf)
            expected = _tree_get(shapes, flax_path)
            if key not in state_dict:
                raise ValueError(f"from_torch({name!r}): missing tensor {key!r} (torch shape "
                                 f"{_torch_shape(expected, layer, suffix)}, for {'/'.join(flax_path)}).")
            array = _to_numpy(state_dict[key], key)
            torch_shape = _torch_shape(expected, layer, suffix)
            if tuple(array.shape) != torch_shape:
                raise ValueError(f"from_torch({name!r}): tensor {key!r} has shape {tuple(array.shape)}, expected "
                                 f"{torch_shape} (for {'/'.join(flax_path)}).")
            if flax_path in filled:  # a mapping bug, not a user error
                raise AssertionError(f"from_torch({name!r}): {'/'.join(flax_path)} filled twice.")
            filled.add(flax_path)
            _tree_set(variables, flax_path, np.ascontiguousarray(_to_flax_layout(array, layer, suffix),
                                                                 dtype=np.float32))
            used.add(key)
        if layer.kind == "bn":
            counter = f"{layer.torch}.num_batches_tracked"
            if counter in state_dict:
                if np.asarray(_to_numpy(state_dict[counter], counter)).size != 1:
                    raise ValueError(f"from_torch({name!r}): tensor {counter!r} must be a scalar.")
                used.add(counter)  # accepted and dropped: cnnlab's BN uses a fixed momentum
    extra = [k for k in keys if k not in used and k not in dropped]
    if extra:
        more = f"; {len(extra) - 1} more" if len(extra) > 1 else ""
        raise ValueError(f"from_torch({name!r}): unexpected tensor {extra[0]!r} (not part of torchvision's {name}"
                         f"{' with aux heads' if keep_aux else ''}){more}.")
    # Every Flax leaf filled exactly once: the layer list must cover the model's tree.
    wanted = set(_leaf_paths(shapes))
    if filled != wanted:  # a mapping bug, not a user error
        raise AssertionError(f"from_torch({name!r}): unfilled {sorted(wanted - filled)[:3]}, "
                             f"unknown {sorted(filled - wanted)[:3]}.")
    if not variables["batch_stats"]:
        del variables["batch_stats"]
    return variables


def to_torch(name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """cnnlab variables of model ``name`` -> torchvision's state dict (name -> numpy array), in torchvision's order.

    BN layers get ``num_batches_tracked`` = 0 (int64 scalar), the value of a fresh torchvision model: cnnlab does
    not count batches. ``torch.load_state_dict({k: torch.from_numpy(v) ...})`` takes the result directly.
    A googlenet with aux heads (aux1/aux2 in the params) gives torchvision's aux1.*/aux2.* tensors.
    Raises:
      ValueError naming the first missing, unexpected or misshapen Flax leaf.
    """
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(f"to_torch({name!r}): expected variables {{'params': ..., 'batch_stats': ...}} as "
                         "model.init or from_torch gives.")
    params = variables["params"]
    stem, head = stem_and_head(name)
    fam = family(name)
    stem_path = ("conv1", "stem_conv") if fam == "googlenet" else ("stem_conv",)
    try:
        stem_kernel = _tree_get(params, (*stem_path, "kernel"))
        head_kernel = _tree_get(params, (*head_path(name), "kernel"))
    except (KeyError, TypeError):
        raise ValueError(f"to_torch({name!r}): params lack {'/'.join(stem_path)}/kernel or "
                         f"{'/'.join(head_path(name))}/kernel; are these {name} variables?") from None
    aux = fam == "googlenet" and "aux1" in params
    model, shapes = _abstract_variables(name, num_classes=int(np.shape(head_kernel)[-1]),
                                        input_channels=int(np.shape(stem_kernel)[2]), aux_logits=aux)
    given = {"params": params, "batch_stats": variables.get("batch_stats", {}) or {}}
    expected_paths = _leaf_paths(shapes)
    given_paths = set(_leaf_paths(given))
    for path in expected_paths:
        if path not in given_paths:
            raise ValueError(f"to_torch({name!r}): missing leaf {'/'.join(path)} (shape {_tree_get(shapes, path)}).")
        shape = tuple(np.shape(_tree_get(given, path)))
        if shape != _tree_get(shapes, path):
            raise ValueError(f"to_torch({name!r}): leaf {'/'.join(path)} has shape {shape}, expected "
                             f"{_tree_get(shapes, path)}.")
    extra = sorted(given_paths - set(expected_paths))
    if extra:
        raise ValueError(f"to_torch({name!r}): unexpected leaf {'/'.join(extra[0])} (not part of cnnlab's {name}).")
    state_dict: dict[str, np.ndarray] = {}
    for layer in _layers(name, model, shapes["params"]):
        for suffix, collection, leaf in _tensors(layer):
            array = np.asarray(jax.device_get(_tree_get(given, (collection, *layer.flax, leaf))), np.float32)
            state_dict[f"{layer.torch}.{suffix}"] = np.ascontiguousarray(_to_torch_layout(array, layer, suffix))
        if layer.kind == "bn":
            state_dict[f"{layer.torch}.num_batches_tracked"] = np.zeros((), np.int64)
    return state_dict


# ----------------------------------------------------------------------------------------------------------------
# Converted files


def save_variables(path: str, variables: Mapping[str, Any], *, model: str, source: str = "") -> None:
    """Writes ``variables`` of cnnlab model ``model`` to ``path`` (.npz, see the module docstring); atomic."""
    flat = {}
    for collection in ("params", "batch_stats"):
        tree = variables.get(collection) or {}
        for leaf_path in _leaf_paths(tree):
            flat["/".join((collection, *leaf_path))] = np.asarray(jax.device_get(_tree_get(tree, leaf_path)),
                                                                  np.float32)
    params = variables["params"]
    head = _tree_get(params, (*head_path(model), "kernel")) if model in TORCHVISION_MODELS else None
    from cnnlab import models  # here, not at import: cnnlab.models imports this module

    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "model": model, "source": source,
            "num_classes": int(np.shape(head)[-1]) if head is not None else None,
            "input_channels": int(models.first_conv_kernel(params).shape[2])}
    flat[META_KEY] = np.array(json.dumps(meta))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".part", delete=False) as handle:
        np.savez(handle, **flat)
    os.replace(handle.name, path)


def load_variables(path: str) -> tuple[dict, dict]:
    """Reads a file written by ``save_variables``: (variables, meta). Clear errors for a missing or foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No converted weights file at {path!r} (write one with `python -m "
                                "cnnlab.models.torch_weights convert ...` or cnnlab.models.save_variables).")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r} is not a .npz file of cnnlab variables ({err}).") from err
    if META_KEY not in contents:
        raise ValueError(f"{path!r} is a .npz file but not one written by cnnlab.models.save_variables (no "
                         f"{META_KEY!r} record). A torchvision state dict saved as .npz must be converted first: "
                         "python -m cnnlab.models.torch_weights convert --model=NAME --torch_file=FILE --out=OUT.npz")
    meta = json.loads(str(contents.pop(META_KEY)))
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path!r}: unknown format {meta.get('format')!r} version {meta.get('version')!r}; this "
                         f"cnnlab reads {FORMAT_NAME!r} version {FORMAT_VERSION}.")
    variables: dict = {}
    for key, array in contents.items():
        _tree_set(variables, tuple(key.split("/")), array)
    return variables, meta


def read_state_dict(path: str) -> dict[str, Any]:
    """A torchvision state dict from ``path``: ``.pth``/``.pt`` (needs torch; read with weights_only=True, so no code
    in the file runs) or ``.npz`` (torchvision names -> arrays, numpy only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: {path!r}.")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"Reading {path!r} needs torch (pip install torch), or save the state dict as .npz "
                          "(numpy arrays under torchvision's names).") from err
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]  # a training checkpoint that wraps the state dict
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path!r} holds a {type(loaded).__name__}, not a state dict (name -> tensor).")
    return dict(loaded)


def convert(model: str, torch_file: str, out: str) -> dict:
    """torchvision weights file -> cnnlab variables file. Returns a summary (tensors, seconds)."""
    start = time.perf_counter()
    state_dict = read_state_dict(torch_file)
    read_seconds = time.perf_counter() - start
    variables = from_torch(model, state_dict)
    convert_seconds = time.perf_counter() - start - read_seconds
    save_variables(out, variables, model=model, source=os.path.abspath(torch_file))
    return {"model": model, "tensors": len(state_dict), "read_seconds": read_seconds,
            "convert_seconds": convert_seconds, "total_seconds": time.perf_counter() - start, "out": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnlab.models.torch_weights",
                                     description="Convert torchvision weights to a cnnlab variables file (.npz).")
    commands = parser.add_subparsers(dest="command", required=True)
    convert_parser = commands.add_parser("convert", help="torchvision .pth/.npz state dict -> cnnlab .npz")
    convert_parser.add_argument("--model", required=True, choices=TORCHVISION_MODELS)
    convert_parser.add_argument("--torch_file", required=True, help="torchvision state dict (.pth, .pt or .npz)")
    convert_parser.add_argument("--out", required=True, help="the cnnlab variables file to write (.npz)")
    args = parser.parse_args(argv)
    try:
        summary = convert(args.model, args.torch_file, args.out)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{summary['model']}: {summary['tensors']} tensors converted in {summary['convert_seconds']:.2f} s "
          f"(read {summary['read_seconds']:.2f} s) -> {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
