"""Classify image files with a trained run's best checkpoint, preprocessed exactly as the run evaluated.

    from cnnlab.jobs import predict
    results = predict.predict("runs/lenet5_mnist", ["seven.png"], top=5)
    results[0]["predictions"][0]       # {"class": "7", "index": 7, "probability": 0.98}

    trained = predict.load_trained("runs/lenet5_mnist")      # once, then many images
    images = np.stack([trained.preprocessing.load(p) for p in paths])  # uint8 [N, H, W, C], the eval view
    logits = trained.logits(images)                          # float32 [N, num_classes]

What is read, and nothing is written: ``DIR/config.json`` (the run's config, for ``data_dir``), the best
checkpoint by eval accuracy in ``DIR/checkpoints`` (the latest if none carries metrics) with its metadata (model,
dataset, class count, trained input shape, model overrides, dtype), and ``cnnlab.data.info(dataset)`` for the
class names and the per-channel mean/std the run normalised with. No dataset is loaded. The checkpoint
directory is opened read-only (no clean-up of a running job's half-written save), so predicting while the run
still trains in DIR is safe.

The run's own preprocessing, per kind of dataset:
- in-memory datasets (digits, mnist, fashion_mnist, cifar10, cifar100): the file is converted to grey (1-channel
  runs) or RGB, resized (bilinear, antialiased; aspect ratio not kept) to the dataset's native size (8x8
  digits, 28x28 MNIST, 32x32 CIFAR), then ``cnnlab.train.steps.preprocess`` zero-pads to ``config.image_size``
  and normalises, exactly as evaluation does. A file already at the native size is used pixel for pixel.
- encoded-image datasets (imagenet2012, prepared image folders): ``cnnlab.data.decode.decode_center_crop``, the
  evaluation view (shorter side resized to S * 256 / 224, centre S x S crop, S the trained size), then the same
  normalisation.
EXIF orientation is not applied (training did not apply it either). MNIST-style datasets are light digits on a
dark background: a photo of dark ink on white paper must be inverted (``invert=True``, ``--invert``); a light
1-channel image on such a run gets a warning saying so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from cnnlab import data, models
from cnnlab.data import decode
from cnnlab.jobs import workdir as workdir_lib
from cnnlab.train import checkpoint as checkpoint_lib
from cnnlab.train import steps as steps_lib
from cnnlab.train.loop import DTYPES  # config.dtype -> the computation dtype

TRAIN_HINT = "train first: python -m experiments.main --config=experiments/configs/NAME.py --workdir={workdir}"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes the uint8 input of a trained model, and how the model normalises it.

    input_shape: (H, W, C) of the uint8 image the host produces (the dataset's native size for in-memory
      datasets, the crop size for encoded-image ones). model_shape: (H', W', C) what the network sees, after the
      device-side zero padding to pad_shape (``config.image_size``) and the bilinear resize to model_shape
      (``config.image_resize``). mean, std: per channel, [0, 1] pixel units.
    encoded: True for encoded-image datasets (centre-crop view), False for in-memory ones (plain resize).
    """

    dataset: str
    input_shape: tuple[int, int, int]
    model_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    encoded: bool
    pad_shape: tuple[int, int, int] | None = None  # None: model_shape (no resize)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return tuple(self.pad_shape) if self.pad_shape is not None else tuple(self.model_shape)

    @property
    def channels(self) -> int:
        return self.input_shape[2]

    def describe(self) -> str:
        """One sentence for people (printed by the CLIs, written into the export's JSON)."""
        height, width, channels = self.input_shape
        colour = "grey" if channels == 1 else "RGB"
        if self.encoded:
            host = (f"{colour}; shorter side resized to {round(height * decode.EVAL_RESIZE_RATIO)} (bilinear), "
                    f"centre {height}x{width} crop")
        else:
            host = f"{colour}; resized to {height}x{width} (bilinear, antialiased, aspect ratio not kept)"
        padded = self.padded_shape
        pad = (f"; zero-padded to {padded[0]}x{padded[1]}" if padded[:2] != self.input_shape[:2] else "")
        if padded[:2] != self.model_shape[:2]:
            pad += f"; resized to {self.model_shape[0]}x{self.model_shape[1]} (bilinear)"
        return f"{host}{pad}; (pixel / 255 - mean) / std with mean {_rounded(self.mean)}, std {_rounded(self.std)}"

    def load(self, path: str, *, invert: bool = False) -> np.ndarray:
        """The image file at ``path`` as the run's evaluation saw its images: uint8 [H, W, C] (``input_shape``).

        Raises FileNotFoundError (no such file), IsADirectoryError, PermissionError, or ValueError (not an
        image PIL can decode, truncated), each naming ``path``.
        """
        encoded_bytes = _read_file(path)
        height, width, channels = self.input_shape
        try:
            if self.encoded:
                pixels = decode.decode_center_crop(encoded_bytes, height)
            else:
                pixels = _resized(encoded_bytes, height, width, channels)
        except (ValueError, OSError, SyntaxError, Image.DecompressionBombError) as error:
            raise ValueError(f"{path} is not an image this run can read ({_first_line(error)}); give a JPEG, "
                             f"PNG, BMP, GIF or other file PIL decodes.") from error
        return 255 - pixels if invert else pixels

    def normalise(self, images: jax.Array) -> jax.Array:
        """uint8 [N, H, W, C] (``input_shape``) -> float32 [N, H', W', C] (``model_shape``), as evaluation does."""
        return steps_lib.preprocess(images, None, mean=self.mean, std=self.std, augment=False,
                                    image_size=self.padded_shape[:2], resize=self.model_shape[:2])


def _rounded(values) -> list[float]:
    return [round(float(v), 4) for v in values]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def check_image_file(path: str) -> None:
    """Raises FileNotFoundError, IsADirectoryError or PermissionError naming ``path`` unless it is a readable
    file (whether it holds an image shows when it is decoded)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file; give the path of an image file.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give image files (e.g. {os.path.join(path, '*.png')}).")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{path} cannot be read by this user (permission denied).")


def _read_file(path: str) -> bytes:
    check_image_file(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError:
        raise PermissionError(f"{path} cannot be read by this user (permission denied).") from None


def _resized(encoded_bytes: bytes, height: int, width: int, channels: int) -> np.ndarray:
    """Decodes to grey (channels 1) or RGB and resizes to height x width: uint8 [height, width, channels]."""
    import io

    image = Image.open(io.BytesIO(encoded_bytes))
    image.load()
    image = image.convert("L" if channels == 1 else "RGB")  # palette, RGBA, CMYK, 16-bit grey, ...
    if image.size != (width, height):
        # Pillow's bilinear filter widens its support when shrinking, so large photos are antialiased.
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image, np.uint8).reshape(height, width, channels)


# ------------------------------------------------------------------------------------------------ the trained model


@dataclasses.dataclass
class TrainedModel:
    """A run's best checkpoint, ready for inference.

    model: the Flax module; variables: {"params": ..., ["batch_stats": ...]} as host numpy arrays;
    class_names: num_classes names; step: the checkpoint's step; eval_accuracy: its accuracy when saved (None if
    it carries no metrics); config: the run's config.json as a dict; seed: the training seed of these weights.
    """

    workdir: str
    model_name: str
    dataset: str
    model: Any
    variables: dict
    class_names: list[str]
    preprocessing: Preprocessing
    step: int
    eval_accuracy: float | None
    config: dict
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def apply(self, variables, images: jax.Array) -> jax.Array:
        """uint8 [N, H, W, C] -> float32 logits [N, num_classes]: normalisation, padding, eval-mode network."""
        outputs = self.model.apply(variables, self.preprocessing.normalise(images), train=False)
        if isinstance(outputs, (tuple, list)):  # auxiliary heads (GoogLeNet) return (logits, aux, ...)
            outputs = outputs[0]
        return outputs.astype(jnp.float32)

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self.apply)

    def logits(self, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """uint8 [N, H, W, C] images (``preprocessing.input_shape``) -> float32 logits [N, num_classes].

        At most ``batch_size`` images go through the network at once (bounded memory for many large images);
        the last batch is zero-padded to the same size, so one program serves every batch.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.preprocessing.input_shape:
            raise ValueError(f"expected uint8 images [N, {', '.join(map(str, self.preprocessing.input_shape))}], "
                             f"got {images.dtype} {list(images.shape)}.")
        if len(images) <= batch_size:
            return np.asarray(self._jitted(self.variables, images))
        parts = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), np.uint8)])
            parts.append(np.asarray(self._jitted(self.variables, padded))[:len(chunk)])
        return np.concatenate(parts)


def _checkpoint_manager(directory: str) -> ocp.CheckpointManager:
    """A read-only view of ``directory``: unlike ``checkpoint.Checkpoints`` it creates and cleans up nothing, so
    it never touches a save that a job still training in the same workdir is writing."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler, meta_handler = ocp.StandardCheckpointHandler(), ocp.JsonCheckpointHandler()
    registry.add("state", ocp.args.StandardRestore, state_handler)
    registry.add("meta", ocp.args.JsonRestore, meta_handler)
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, cleanup_tmp_directories=False,
                                           save_interval_steps=0, best_fn=lambda m: m["eval_accuracy"],
                                           best_mode="max", enable_async_checkpointing=False)
    quiet = _DropReadOnlyNotice()
    logger = logging.getLogger("absl")
    logger.addFilter(quiet)
    try:
        return ocp.CheckpointManager(directory, options=options, handler_registry=registry)
    finally:
        logger.removeFilter(quiet)


class _DropReadOnlyNotice(logging.Filter):
    """Drops Orbax's warning that the directory is read-only: read-only is what is asked for here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "read only" not in record.getMessage()


def _restore_variables(manager, directory: str, step: int, expected, seed_index: int | None = None) -> dict:
    """The params and BN statistics of ``step`` as numpy arrays, checked against ``expected`` (the model's
    abstract variables). The optimizer state is read too (the saved tree is restored as saved) and dropped.
    ``seed_index``: a stacked seeds checkpoint (every leaf [N, ...]): the slice of that seed."""
    where = os.path.join(directory, str(step))
    try:
        saved = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(saved))
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many types; re-raised with the step
        raise checkpoint_lib.CheckpointError(
            f"Checkpoint {where} cannot be read ({checkpoint_lib._short(error)}); it is damaged. Move it away "
            f"(mv {where} {where}.damaged) to use the next best one.") from error
    variables = {"params": restored["params"]}
    if restored.get("batch_stats"):
        variables["batch_stats"] = restored["batch_stats"]
    if seed_index is not None:
        variables = jax.tree.map(lambda v: np.asarray(v)[seed_index], variables)
    want = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_leaves_with_path(variables)}
    if want != have:
        different = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:3]
        raise checkpoint_lib.CheckpointError(
            f"Checkpoint {where} does not fit the model its metadata names (first differences: "
            + ", ".join(f"{k}: checkpoint {have.get(k)} vs model {want.get(k)}" for k in different) + ").")
    return jax.tree.map(lambda v, e: np.asarray(v, dtype=e.dtype), variables, expected)


def _read_config(workdir: str, hint: str) -> dict:
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir {workdir} does not exist; {hint}.")
    config_path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{workdir} has no {workdir_lib.CONFIG_FILE}: no job ran there; {hint}.")
    config = workdir_lib.read_json(config_path)
    kind = config.get("kind", "train")
    if kind != "train":
        raise ValueError(f"{workdir} holds a {kind!r} job; predicting and exporting need a training run (kind "
                         "'train').")
    return config


def _has_checkpoints(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _seed_workdirs(workdir: str) -> dict[int, str]:
    """seed -> its workdir, for the ``seed_<n>/`` runs of a seeds run (``cnnlab.jobs.seeds``) under ``workdir``."""
    found = {}
    for name in sorted(os.listdir(workdir)):
        path = os.path.join(workdir, name)
        if name.startswith("seed_") and os.path.isfile(os.path.join(path, workdir_lib.CONFIG_FILE)):
            with contextlib.suppress(ValueError, FileNotFoundError):
                found[int(workdir_lib.read_json(os.path.join(path, workdir_lib.CONFIG_FILE)).get("seed", 0))] = path
    return found


def _resolve(workdir: str, seed: int | None) -> tuple[str, dict]:
    """(the workdir whose checkpoints hold the model, its config): ``workdir`` itself, or for a seeds run over
    separate workdirs the ``seed_<n>/`` of ``seed``. Errors say what to train or which --seed to choose."""
    hint = TRAIN_HINT.format(workdir=workdir)
    config = _read_config(workdir, hint)
    if _has_checkpoints(workdir):
        if seed is not None and not config.get("seeds_stacked") and int(config.get("seed", 0)) != seed:
            raise ValueError(f"{workdir} is a run of seed {config.get('seed', 0)} only; --seed={seed} does not "
                             "exist there.")
        return workdir, config
    per_seed = _seed_workdirs(workdir)
    if per_seed:
        if seed is None or seed not in per_seed:
            choice = "choose one" if seed is None else f"--seed={seed} is not one of them; choose one"
            raise ValueError(f"{workdir} is a run over seeds {sorted(per_seed)}, each with its own checkpoints: "
                             f"{choice} with --seed=S (or give its workdir, e.g. --workdir="
                             f"{per_seed[min(per_seed)]}).")
        return _resolve(per_seed[seed], None)
    parent = os.path.dirname(workdir)
    if os.path.basename(workdir).startswith("seed_") and _has_checkpoints(parent):
        raise FileNotFoundError(f"{workdir} is one seed of a stacked seeds run: its checkpoint is the shared one "
                                f"in {parent}/checkpoints; use --workdir={parent} --seed={config.get('seed', 0)}.")
    raise FileNotFoundError(f"{workdir} has no checkpoints (nothing in {os.path.join(workdir, 'checkpoints')}); "
                            f"{hint}, or wait for its first checkpoint.")


def load_trained(workdir: str, *, seed: int | None = None) -> TrainedModel:
    """The best checkpoint of the training run in ``workdir`` (see the module docstring); reads, never writes.

    ``seed`` picks one seed of a seeds run (``config.seeds`` > 1): its ``seed_<n>/`` workdir, or its slice of a
    stacked run's shared checkpoint (``config.seeds_stacked``); such runs need it, single runs ignore it when it
    is their own seed.

    Raises FileNotFoundError (no such workdir, no config.json, no checkpoints: train first), ValueError (a
    workdir of another job kind, a seeds run without a valid ``seed``), CheckpointError (a damaged checkpoint or
    one that does not fit its model).
    """
    workdir, config = _resolve(os.path.abspath(workdir), seed)
    directory = os.path.join(workdir, "checkpoints")
    manager = _checkpoint_manager(directory)
    try:
        step = manager.best_step()
        if step is None:
            raise FileNotFoundError(f"{workdir} has no complete checkpoint yet; {TRAIN_HINT.format(workdir=workdir)}"
                                    ", or wait for its first checkpoint.")
        try:
            meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        except Exception as error:  # noqa: BLE001
            raise checkpoint_lib.CheckpointError(
                f"The metadata of checkpoint {os.path.join(directory, str(step))} cannot be read "
                f"({checkpoint_lib._short(error)}); it is damaged.") from error
        saved_config = meta.get("config") or {}
        dtype = saved_config.get("dtype", config.get("dtype", "float32"))
        if dtype not in DTYPES:
            raise ValueError(f"checkpoint {step} in {directory} was trained with dtype {dtype!r}, which this "
                             f"version of cnnlab does not know ({list(DTYPES)}).")
        if all(key in meta for key in ("mean", "std", "class_names", "encoded_images", "input_shape")):
            # Checkpoints record the run's preprocessing: no need for the prepared data.
            class_names, mean, std = list(meta["class_names"]), meta["mean"], meta["std"]
            encoded, native_shape = bool(meta["encoded_images"]), tuple(int(v) for v in meta["input_shape"])
        else:  # older checkpoints: the dataset's current info
            info = data.info(meta["dataset"], data_dir=config.get("data_dir") or None)
            class_names, mean, std = list(info.class_names), info.mean, info.std
            encoded = None in tuple(info.image_shape)
            native_shape = None if encoded else tuple(int(v) for v in info.image_shape)
        if len(class_names) != int(meta["num_classes"]):
            raise checkpoint_lib.CheckpointError(
                f"checkpoint {step} in {directory} has {meta['num_classes']} classes, but dataset "
                f"{meta['dataset']!r} now has {len(class_names)}; the dataset changed since training.")
        model_shape = tuple(int(v) for v in meta["image_shape"])
        input_shape = model_shape if encoded else native_shape
        preprocessing = Preprocessing(dataset=meta["dataset"], input_shape=input_shape, model_shape=model_shape,
                                      mean=tuple(float(v) for v in mean),
                                      std=tuple(float(v) for v in std), encoded=encoded,
                                      pad_shape=tuple(int(v) for v in meta.get("pad_shape", model_shape)))
        model = models.get(meta["model"], num_classes=int(meta["num_classes"]), dtype=DTYPES[dtype],
                           **(meta.get("model_overrides") or {}))
        expected = jax.eval_shape(lambda key: model.init(key, jnp.zeros((1, *model_shape), jnp.float32),
                                                         train=False), jax.random.key(0))
        seed_index = None
        if meta.get("stacked"):
            seeds = [int(v) for v in meta.get("seeds", [])]
            if seed not in seeds:
                choice = "choose one" if seed is None else f"--seed={seed} is not one of them; choose one"
                raise ValueError(f"{workdir} holds seeds {seeds} trained together in one checkpoint "
                                 f"(config.seeds_stacked): {choice} with --seed=S.")
            seed_index = seeds.index(seed)
        variables = _restore_variables(manager, directory, step, expected, seed_index)
        metrics = manager.metrics(step) or {}
    finally:
        manager.close()
    if seed_index is not None and isinstance(metrics.get("eval_accuracy"), (list, tuple)):
        metrics = dict(metrics, eval_accuracy=metrics["eval_accuracy"][seed_index])
    accuracy = metrics.get("eval_accuracy")
    return TrainedModel(workdir=workdir, model_name=meta["model"], dataset=meta["dataset"], model=model,
                        variables=variables, class_names=class_names,
                        preprocessing=preprocessing,
                        step=int(step), eval_accuracy=float(accuracy) if isinstance(accuracy, (int, float)) else None,
                        config=config, seed=seed if seed is not None else int(config.get("seed", 0)))


# ------------------------------------------------------------------------------------------------ predict


def _light_background_warning(trained: TrainedModel, image: np.ndarray) -> str | None:
    """A note when a light 1-channel image meets a run trained on dark backgrounds (MNIST-style digits)."""
    if trained.preprocessing.channels != 1 or trained.preprocessing.mean[0] >= 0.5 or image.mean() <= 127:
        return None
    return (f"this image is mostly light (mean pixel {image.mean():.0f}/255), but {trained.dataset} images are "
            "light on a dark background: if it is dark ink on light paper, rerun with --invert.")


def predict_images(trained: TrainedModel, image_paths: Sequence[str], *, top: int = 5, invert: bool = False,
                   batch_size: int = 256) -> list[dict]:
    """Per image, in order: {"image": path, "predictions": [{"class", "index", "probability"}, ...] (``top``
    of them, most probable first), "warnings": [str, ...]}. Every file is read before the model runs, so a bad
    file fails before any output; ``batch_size`` images at a time go through the network."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"--top must be a positive integer, got {top!r}.")
    if not image_paths:
        raise ValueError("no image files given; name one or more after the flags.")
    images = np.stack([trained.preprocessing.load(os.fspath(p), invert=invert) for p in image_paths])
    logits = trained.logits(images, batch_size=batch_size)
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1), np.float64)
    k = min(top, trained.num_classes)
    results = []
    for path, image, row in zip(image_paths, images, probabilities):
        order = np.argsort(-row, kind="stable")[:k]
        warning = _light_background_warning(trained, image)
        results.append({"image": os.fspath(path),
                        "predictions": [{"class": trained.class_names[i], "index": int(i),
                                         "probability": float(row[i])} for i in order],
                        "warnings": [warning] if warning else []})
    return results


def predict(workdir: str, image_paths: Sequence[str], top: int = 5, *, invert: bool = False,
            batch_size: int = 256, seed: int | None = None) -> list[dict]:
    """Classifies ``image_paths`` with the best checkpoint of the run in ``workdir``; see ``predict_images``."""
    if not image_paths:
        raise ValueError("no image files given; name one or more after the flags.")
    for path in image_paths:  # a typo in a file name fails before the model is restored
        check_image_file(os.fspath(path))
    return predict_images(load_trained(workdir, seed=seed), image_paths, top=top, invert=invert,
                          batch_size=batch_size)


def format_text(trained: TrainedModel, results: Sequence[dict]) -> str:
    """The CLI's human-readable output: a header naming the checkpoint, then per image its top classes."""
    accuracy = f", eval accuracy {trained.eval_accuracy:.4f}" if trained.eval_accuracy is not None else ""
    lines = [f"{trained.model_name} on {trained.dataset}, checkpoint step {trained.step}{accuracy}"]
    for result in results:
        lines.append(result["image"])
        width = max(len(p["class"]) for p in result["predictions"])
        for rank, p in enumerate(result["predictions"], 1):
            lines.append(f"  {rank}. {p['class']:<{width}}  {p['probability']:.4f}")
        lines.extend(f"  warning: {w}" for w in result["warnings"])
    return "\n".join(lines)
