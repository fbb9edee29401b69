"""Initialising a run from pretrained weights: ``config.init_from`` and ``config.init_freeze``.

``config.init_from`` names either
  * a converted weights file (``.npz`` written by ``python -m cnnlab.models.torch_weights convert ...`` or by
    ``cnnlab.models.save_variables``; see cnnlab/models/torch_weights.py), or
  * another cnnlab run: its workdir (or the workdir's ``checkpoints`` folder); the params and batch statistics
    of its best checkpoint (by eval accuracy; the latest when none has metrics) are taken, nothing else (the
    optimizer state, step and random key stay fresh).

The source must be the same model (``config.model``) with the same layer shapes, except:
  * the classifier ("the head": ``fc`` of the ResNets and GoogLeNet, ``fc3`` of VGG/AlexNet, ``classifier`` of the
    DenseNets, ``output`` of LeNet-5, and GoogLeNet's auxiliary ``aux1/fc2``, ``aux2/fc2``) when the class count
    differs: it keeps this run's fresh initialisation;
  * the first convolution's input channels: 3-channel weights into a 1-channel model (Fashion-MNIST, MNIST,
    digits) are summed over the input channels, which is exactly what the 3-channel model computes on a grey
    image copied into its three channels; 1-channel weights into a 3-channel model are divided by 3 and copied;
  * GoogLeNet's auxiliary heads: dropped when the run's model has none, kept fresh when the source has none.
Each such change is printed as one line. Anything else (another model, a different stem, ...) is a ValueError
naming the first mismatching parameter.

``config.init_freeze``:
  * "none" (default): everything trains from the loaded values;
  * "batch_stats": every parameter trains, but the BN layers use and keep the loaded running statistics
    (as in evaluation), so small fine-tuning batches cannot disturb them;
  * "backbone": only the head trains (the optimizer's updates of every other parameter are zero, weight decay
    included) and BN statistics are frozen as with "batch_stats": the backbone stays exactly the source's.
The freezing itself is done by ``cnnlab.train.state.make_optimizer`` (masked updates) and
``cnnlab.train.steps.train_step`` (frozen BN statistics).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from cnnlab.models import torch_weights

FREEZE_CHOICES = ("none", "backbone", "batch_stats")

# Classifier layers per registered model family (top-level Flax module names); see head_paths.
_HEADS = {"lenet5": ("output",), "alexnet": ("fc3",), "vgg": ("fc3",), "googlenet": ("fc",), "resnet": ("fc",),
          "densenet": ("classifier",)}


def head_paths(model_name: str) -> tuple[tuple[str, ...], ...]:
    """The Flax paths of the layers that output class scores in model ``model_name`` (for every registered model:
    the ImageNet ones, the CIFAR ResNets/DenseNet, alexnet_cifar, lenet5)."""
    for prefix, heads in _HEADS.items():
        if model_name.startswith(prefix):
            paths = tuple((head,) for head in heads)
            if prefix == "googlenet":
                paths += (("aux1", "fc2"), ("aux2", "fc2"))
            return paths
    raise ValueError(f"No classifier layer known for model {model_name!r}.")


def freeze_mode(config) -> str:
    mode = config.get("init_freeze", "none") or "none"
    if mode not in FREEZE_CHOICES:
        raise ValueError(f"config.init_freeze must be one of {list(FREEZE_CHOICES)}, got {mode!r}.")
    if mode != "none" and not config.get("init_from"):
        raise ValueError(f"config.init_freeze={mode!r} freezes loaded weights, but config.init_from is not set: "
                         "set init_from (a converted .npz or a cnnlab workdir) or init_freeze='none'.")
    return mode


def is_head(model_name: str, path: tuple[str, ...]) -> bool:
    """Whether the parameter at ``path`` (keys from the params root) belongs to a classifier layer."""
    return any(tuple(path[:len(head)]) == head for head in head_paths(model_name))


def _leaves(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_leaves(value, (*prefix, str(key))))
        else:
            out[(*prefix, str(key))] = value
    return out


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _to_plain(tree: Any) -> Any:
    return {k: _to_plain(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


# ----------------------------------------------------------------------------------------------------------------
# Sources


def _checkpoint_directory(path: str) -> str | None:
    """The Orbax checkpoint directory of a cnnlab workdir (or the directory itself), or None."""
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints")
    if os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path)):
        return path
    return None


def _read_checkpoint(directory: str) -> tuple[dict, dict]:
    """(variables as host numpy arrays, meta) of the best checkpoint in ``directory``."""
    import orbax.checkpoint as ocp

    from cnnlab.train import checkpoint as checkpoint_lib

    checkpoints = checkpoint_lib.Checkpoints(directory, keep=1_000_000, async_save=False)
    try:
        step = checkpoints.best_step()
        if step is None:
            raise FileNotFoundError(f"config.init_from: {directory} holds no checkpoint (train that run first).")
        meta = checkpoints.read_meta(step)
        saved = checkpoints.manager.item_metadata(step)["state"]
        # Every array restored onto this host's first device, whatever the device count that wrote it.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), saved)
        restored = checkpoints.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    finally:
        checkpoints.close()
    state = restored["state"]
    variables = {"params": jax.device_get(_to_plain(state["params"])),
                 "batch_stats": jax.device_get(_to_plain(state.get("batch_stats") or {}))}
    meta = {**meta, "source": f"{directory} step {step}"}
    return variables, meta


def load_source(path: str) -> tuple[dict, dict]:
    """(variables, meta with at least "model" and "source") from a converted file or a cnnlab workdir."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"config.init_from must be a path (a converted .npz or a cnnlab workdir), got {path!r}.")
    if os.path.isfile(path):
        variables, meta = torch_weights.load_variables(path)
        return variables, {**meta, "source": path}
    if os.path.isdir(path):
        directory = _checkpoint_directory(path)
        if directory is None:
            seeds = sorted(name for name in os.listdir(path) if name.startswith("seed_"))
            hint = f" It holds {seeds[:3]}: name one of those run directories." if seeds else ""
            raise FileNotFoundError(f"config.init_from: {path} is a directory without cnnlab checkpoints (no "
                                    f"'checkpoints' folder).{hint}")
        return _read_checkpoint(directory)
    raise FileNotFoundError(f"config.init_from: no such file or directory: {path!r}. Give a converted weights file "
                            "(python -m cnnlab.models.torch_weights convert ...) or a cnnlab workdir.")


# ----------------------------------------------------------------------------------------------------------------
# Matching the source to this run's model


def _stem_kernel_path(model_name: str) -> tuple[str, ...]:
    return ("conv1", "stem_conv", "kernel") if model_name.startswith("googlenet") else ("stem_conv", "kernel")


def merge(model_name: str, source: Mapping, target: Mapping) -> tuple[dict, list[str]]:
    """This run's variables (``target``, any arrays) with the source's values put in; (merged, change lines).

    Both are {"params": ..., "batch_stats": ...}. See the module docstring for what may differ. Raises ValueError
    naming the first parameter that cannot be taken.
    """
    source_leaves = {(c, *p): v for c in ("params", "batch_stats") for p, v in _leaves(source.get(c) or {}).items()}
    target_leaves = {(c, *p): v for c in ("params", "batch_stats") for p, v in _leaves(target.get(c) or {}).items()}
    changes: list[str] = []
    merged_leaves: dict[tuple[str, ...], Any] = {}
    fresh_heads: set[tuple[str, ...]] = set()
    stem = ("params", *_stem_kernel_path(model_name))
    for path, target_leaf in target_leaves.items():
        head = path[0] == "params" and is_head(model_name, path[1:])
        if path not in source_leaves:
            if path[1] in ("aux1", "aux2"):
                fresh_heads.add(path[1])
                merged_leaves[path] = target_leaf
                continue
            raise ValueError(f"config.init_from: the source has no {'/'.join(path)} (shape {target_leaf.shape}); "
                             f"is it a {model_name} with the same options (config.model_overrides)?")
        value = np.asarray(source_leaves[path])
        if value.shape == target_leaf.shape:
            merged_leaves[path] = value.astype(np.float32)
        elif head:
            fresh_heads.add("/".join(path[1:-1]))
            merged_leaves[path] = target_leaf
        elif path == stem and value.shape[:2] == target_leaf.shape[:2] and value.shape[3] == target_leaf.shape[3]:
            if target_leaf.shape[2] == 1:
                merged_leaves[path] = value.sum(axis=2, keepdims=True).astype(np.float32)
                changes.append(f"init_from: first convolution {value.shape} summed over its {value.shape[2]} input "
                               f"channels -> {target_leaf.shape} (the same response to a grey image)")
            elif value.shape[2] == 1:
                repeated = np.repeat(value / target_leaf.shape[2], target_leaf.shape[2], axis=2)
                merged_leaves[path] = repeated.astype(np.float32)
                changes.append(f"init_from: first convolution {value.shape} divided by {target_leaf.shape[2]} and "
                               f"copied to {target_leaf.shape}")
            else:
                raise ValueError(f"config.init_from: the first convolution has {value.shape[2]} input channels in "
                                 f"the source and {target_leaf.shape[2]} in this run; only 3 <-> 1 is converted.")
        else:
            raise ValueError(f"config.init_from: {'/'.join(path)} has shape {value.shape} in the source but "
                             f"{tuple(target_leaf.shape)} in this run's {model_name}; only the classifier may differ "
                             "(different model_overrides, e.g. small_input?).")
    extra = sorted(set(source_leaves) - set(target_leaves))
    dropped_aux = sorted({p[1] for p in extra if p[1] in ("aux1", "aux2")})
    extra = [p for p in extra if p[1] not in ("aux1", "aux2")]
    if extra:
        raise ValueError(f"config.init_from: the source has {'/'.join(extra[0])}, which this run's {model_name} "
                         "lacks; is it the same model (config.model, config.model_overrides)?")
    if dropped_aux:
        changes.append(f"init_from: auxiliary heads {', '.join(dropped_aux)} of the source not used (this model has "
                       "aux_logits off)")
    for head in sorted(fresh_heads):
        if head in ("aux1", "aux2"):
            changes.append(f"init_from: auxiliary head {head} freshly initialised (the source has none)")
            continue
        kernel = ("params", *head.split("/"), "kernel")
        changes.append(f"init_from: head {head} replaced: {tuple(np.shape(source_leaves[kernel]))} in the source, "
                       f"{tuple(target_leaves[kernel].shape)} here, freshly initialised")
    merged = _to_plain(target)
    for path, value in merged_leaves.items():
        _set(merged, path, value)
    return merged, changes


def initialize_from(config, state, *, model, mesh, shardings):
    """Returns ``state`` with its params and batch statistics taken from ``config.init_from`` (see the module
    docstring), placed with ``shardings``. The optimizer state is kept as initialised: the optimizers of
    ``state.make_optimizer`` start from zero moments whatever the parameter values."""
    del model, mesh  # the shardings say where everything goes
    freeze_mode(config)
    model_name = config.model
    variables, meta = load_source(config.init_from)
    if meta.get("model") != model_name:
        raise ValueError(f"config.init_from: {meta.get('source')} holds {meta.get('model')!r} weights, but "
                         f"config.model is {model_name!r}: set config.model={meta.get('model')!r} or convert "
                         f"{model_name} weights.")
    target = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
    merged, changes = merge(model_name, variables, target)
    print(f"init_from: {model_name} weights from {meta.get('source')}")
    for line in changes:
        print(line)
    params = jax.device_put(merged["params"], shardings.params)
    batch_stats = jax.device_put(merged["batch_stats"], shardings.batch_stats) if merged["batch_stats"] else \
        state.batch_stats
    return state.replace(params=params, batch_stats=batch_stats)
