"""A trained run as one self-contained file: ``jax.export`` StableHLO with the weights inside, plus a JSON card.

    from cnnlab.jobs import export
    card = export.export_model("runs/lenet5_mnist", "lenet5_mnist.jaxexport")
    # writes lenet5_mnist.jaxexport (the serialized jax.export.Exported) and lenet5_mnist.jaxexport.json

The exported function is the best checkpoint's network in eval mode (BN running statistics, no dropout) with the
run's device-side preprocessing in front: uint8 images [N, H, W, C] in (H, W, C from the card's
``input.shape``; N any size: the batch dimension is symbolic), zero padding to the trained size, ``(x / 255 -
mean) / std``, float32 logits [N, num_classes] out. The parameters are closed over, so they are constants in the
StableHLO module: the file needs neither cnnlab, Flax nor the checkpoint. The host-side step, turning a file into
the uint8 [H, W, C] view (grey or RGB, resize or centre crop), is described in the card's ``preprocessing`` and
done by ``cnnlab.jobs.predict.Preprocessing.load`` for cnnlab users.

Loading it back needs only jax and numpy (``LOADER`` below, also in docs/predict_export.md):

    import json, numpy as np
    from jax import export
    with open("lenet5_mnist.jaxexport", "rb") as f:
        model = export.deserialize(bytearray(f.read()))
    card = json.load(open("lenet5_mnist.jaxexport.json"))
    logits = np.asarray(model.call(images_uint8))          # [N, H, W, C] uint8 -> [N, num_classes] float32

Compatibility is jax.export's: a file serialized by one jax release loads in releases up to several months
newer (the calling convention version is in the card); it runs on the platforms it was lowered for
(``platforms``, default the current backend).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from cnnlab.jobs import predict as predict_lib
from cnnlab.jobs import workdir as workdir_lib

CARD_FORMAT = "cnnlab-jax-export/1"
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

LOADER = '''\
import json
import numpy as np
from jax import export

def load_exported(path):
    """(call, card): call maps uint8 images [N, H, W, C] to float32 logits [N, K] (numpy in, numpy out)."""
    with open(path, "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
    with open(path + ".json", encoding="utf-8") as f:
        card = json.load(f)
    return (lambda images: np.asarray(exported.call(np.asarray(images, np.uint8)))), card
'''


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_platforms(platforms: Sequence[str] | None) -> tuple[str, ...]:
    if platforms is None or len(platforms) == 0:
        return (jax.default_backend(),)
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if unknown:
        raise ValueError(f"unknown platform(s) {unknown} in --platforms; use some of {list(KNOWN_PLATFORMS)}.")
    return tuple(dict.fromkeys(platforms))


def _check_out(out: str) -> str:
    out = os.path.abspath(os.fspath(out))
    parent = os.path.dirname(out)
    if os.path.isdir(out):
        raise IsADirectoryError(f"--out {out} is a directory; give a file name, e.g. "
                                f"{os.path.join(out, 'model.jaxexport')}.")
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"--out {out}: the directory {parent} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: the directory {parent} is not writable by this user.")
    return out


def portable(model):
    """``model`` with ``lax`` convolutions: an exported file runs on other machines and must not call into this
    process's compiled oneDNN library (``cnnlab.native``), which its loader does not have. Same values."""
    if getattr(model, "conv_impl", "xla") in ("auto", "onednn"):
        return model.clone(conv_impl="xla")
    return model


def export_trained(trained: predict_lib.TrainedModel, *, platforms: Sequence[str] | None = None):
    """(exported, card): the ``jax.export.Exported`` of ``trained`` (see the module docstring) and its JSON card."""
    platforms = _check_platforms(platforms)
    trained = dataclasses.replace(trained, model=portable(trained.model))
    variables = jax.tree.map(jnp.asarray, trained.variables)

    def logits_of(images):  # uint8 [N, H, W, C] -> float32 [N, K]; the weights are closed over: constants
        return trained.apply(variables, images)

    batch, = jax.export.symbolic_shape("batch")
    height, width, channels = trained.preprocessing.input_shape
    spec = jax.ShapeDtypeStruct((batch, height, width, channels), jnp.uint8)
    exported = jax.export.export(jax.jit(logits_of), platforms=platforms)(spec)
    prep = trained.preprocessing
    card = {
        "format": CARD_FORMAT,
        "file": "jax.export.Exported serialized with Exported.serialize(); load with jax.export.deserialize",
        "model": trained.model_name, "dataset": trained.dataset, "seed": trained.seed, "checkpoint_step": trained.step,
        "eval_accuracy": trained.eval_accuracy, "workdir": trained.workdir,
        "class_names": list(trained.class_names), "num_classes": trained.num_classes,
        "input": {"shape": [None, height, width, channels], "dtype": "uint8", "layout": "NHWC",
                  "channels": "grey" if channels == 1 else "RGB", "batch": "any size (symbolic dimension)"},
        "output": {"shape": [None, trained.num_classes], "dtype": "float32",
                   "meaning": "logits; softmax over the last axis gives class probabilities"},
        "preprocessing": {
            "host": ("encoded image -> decode_center_crop: shorter side resized to "
                     f"round({height} * 256 / 224), centre {height}x{width} crop" if prep.encoded else
                     f"image -> {'grey (L)' if channels == 1 else 'RGB'}, resized to {height}x{width} "
                     "(PIL bilinear)"),
            "in_model": (f"zero-pad to {prep.padded_shape[0]}x{prep.padded_shape[1]}, " if
                         prep.padded_shape[:2] != prep.input_shape[:2] else "") + "(x / 255 - mean) / std"
                        + (f", bilinear resize to {prep.model_shape[0]}x{prep.model_shape[1]}"
                           if prep.padded_shape[:2] != prep.model_shape[:2] else ""),
            "mean": list(prep.mean), "std": list(prep.std), "summary": prep.describe()},
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "software": {"cnnlab": _version("cnnlab"), "jax": jax.__version__, "jaxlib": _version("jaxlib")},
    }
    return exported, card


def export_model(workdir: str, out: str, *, platforms: Sequence[str] | None = None, seed: int | None = None) -> dict:
    """Writes ``out`` (the serialized model) and ``out + ".json"`` (the card) for the run in ``workdir``.

    Every check (workdir, checkpoint, output path, platforms) and the export itself happen before the first
    byte is written; both files are written under temporary names and renamed. ``seed``: for a run over several
    seeds, which seed's model (see ``predict.load_trained``). Returns the card.
    """
    out = _check_out(out)
    _check_platforms(platforms)
    trained = predict_lib.load_trained(workdir, seed=seed)
    exported, card = export_trained(trained, platforms=platforms)
    blob = exported.serialize()
    card["bytes"] = len(blob)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(blob)
    workdir_lib.write_json(out + ".json", card)
    os.replace(tmp, out)
    return card
