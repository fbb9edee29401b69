"""Defaults shared by every CNN training config (``kind="train"``); each experiment file overrides what it needs.

Every field can be changed from the command line: ``--config.FIELD=VALUE`` (e.g. ``--config.num_epochs=3``,
``--config.lr_boundaries_epochs='(10, 15)'``, ``--config.data_dir=/data/tfds``).
"""

import dataclasses
import difflib

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    """The full set of training fields with neutral defaults (see docs/training.md for each one)."""
    c = ml_collections.ConfigDict()
    c.kind = "train"
    # Data.
    c.dataset = "fashion_mnist"            # one of cnnlab.data.names()
    c.data_dir = config_dict.placeholder(str)  # TFDS data dir; None: the default (~/tensorflow_datasets)
    c.train_split = "train"
    c.eval_split = "test"                  # evaluated after every epoch; "best" checkpoint = best accuracy here
    c.image_size = 0                       # >0: zero-pad images to image_size x image_size on device
    c.image_resize = 0                     # >0: then resize (bilinear, on device) to image_resize x image_resize
    c.augment = False                      # random crop (zero padding 4) + horizontal flip, on device
    c.augment_pad = 4                      # crop offsets: up to this many pixels (0: flips only)
    c.augment_flip = True
    # Streaming input (encoded-image datasets: imagenet2012, image folders; cnnlab/train/feeds.py).
    c.streaming = config_dict.placeholder(bool)  # None: stream exactly the encoded-image datasets; False: decode a
                                           # small one into memory once; there image_size is the crop size (224)
    c.data_threads = 2                     # threads decoding batches in each process (PIL releases the GIL)
    c.data_workers = 0                     # grain worker processes decoding batches (0: none)
    c.prefetch_batches = 2                 # batches decoded ahead of the device, per process
    # Model.
    c.model = "lenet5"                     # one of cnnlab.models.names()
    c.model_overrides = ml_collections.ConfigDict()  # extra constructor arguments, e.g. {"style": "original"}
    c.dtype = "float32"                    # computation dtype: "float32" or "bfloat16" (parameters stay float32)
    c.init_from = ""                       # start from these weights: a converted .npz (python -m
                                           # cnnlab.models.torch_weights convert) or a cnnlab workdir's best checkpoint
    c.init_freeze = "none"                 # with init_from: "none", "backbone" (train the head only, BN statistics
                                           # frozen) or "batch_stats" (BN uses and keeps its running statistics)
    # Optimisation.
    c.num_epochs = 10
    c.num_train_steps = 0                  # > 0 overrides num_epochs
    c.batch_size = 128                     # global batch, split over all devices
    c.eval_batch_size = 1000
    c.optimizer = "sgd"                    # "sgd", "adam" or "adamw"
    c.learning_rate = 0.1                  # peak learning rate
    c.momentum = 0.9                       # sgd
    c.nesterov = False                     # sgd
    c.b1 = 0.9                             # adam/adamw
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = 0.0                   # L2 (sgd, adam) or decoupled (adamw), on every parameter
    c.grad_clip_norm = 0.0                 # > 0: clip the global gradient norm
    c.label_smoothing = 0.0
    c.schedule = "constant"                # "constant", "step", "cosine" or "onecycle"
    c.warmup_epochs = 0.0                  # linear warmup (constant, step, cosine)
    c.lr_boundaries_steps = ()             # step schedule: decay at these optimizer steps...
    c.lr_boundaries_epochs = ()            # ...or at these epochs (when lr_boundaries_steps is empty)
    c.lr_decay_factor = 0.1
    c.final_lr_fraction = 0.0              # cosine: final lr / peak lr
    c.onecycle_pct_start = 0.3
    c.seed = 0
    # Seeds and determinism (docs/seeds.md).
    c.seeds = 1                            # N > 1: run seeds seed, seed+1, ..., seed+N-1 into workdir/seed_<n>/ and
                                           # aggregate (mean, std, CI) in workdir/results.json and report.md
    c.seeds_stacked = False                # N > 1: train the N seeds together (cnnlab.train.stacked;
                                           # pays on accelerators, not on CPU: docs/seeds.md)
    c.deterministic = False                # GPU: XLA's deterministic ops (slower); CPU runs are deterministic anyway
    # Loop, checkpoints, logging.
    c.steps_per_dispatch = 1               # optimizer steps per jitted call; k > 1 scans over k batches (unrolled
                                           # on CPU): fewer dispatches, one more compile per distinct k
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000        # plus one at every epoch end; 0: epoch ends only
    c.keep_checkpoints = 2                 # latest N kept, plus the best by eval accuracy
    c.report = True                        # write plots and report.md at the end
    c.num_devices = 0                      # 0: every device; n: the first n (tests, 1-vs-N comparisons)
    c.multihost = False                    # call jax.distributed.initialize() (also on JAX_COORDINATOR_ADDRESS)
    return c


@dataclasses.dataclass(frozen=True)
class ConfigArgs:
    """A parsed config argument ``[CHOICE][,FLAG...][,KEY=VALUE...]`` (e.g. ``mnist,runlocal``)."""

    choice: str | None
    flags: frozenset[str]
    options: dict

    def __contains__(self, flag: str) -> bool:
        return flag in self.flags


def parse_arg(arg, *, flags: tuple[str, ...] = ("runlocal",), choices: tuple[str, ...] = (),
              default_choice: str | None = None, options: dict | None = None, config: str = "this config") -> ConfigArgs:
    """The one parser of every config's ``:ARG``: comma-separated words, each a choice (e.g. a dataset), a flag
    (e.g. ``runlocal``) or ``key=value`` (an option of a declared type). An unknown word is a ValueError that
    lists what the config knows and suggests the closest one (``runlcoal`` -> ``runlocal``)."""
    options = dict(options or {})
    known = list(choices) + list(flags) + [f"{k}=..." for k in options]
    choice, seen, values = None, set(), {}
    for word in (w.strip() for w in (arg or "").split(",")):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if eq and key in options:
            try:
                values[key] = options[key](value)
            except ValueError:
                raise ValueError(f"{config}: {key}={value!r} is not a valid {options[key].__name__}.") from None
        elif not eq and word in flags:
            seen.add(word)
        elif not eq and word in choices and choice is None:
            choice = word
        elif key == "seeds":
            raise ValueError(f"{config}: the number of seeds is a config field, not a config argument: write "
                             f"--config.seeds={value or 'N'} (one syntax for every experiment).")
        else:
            close = difflib.get_close_matches(key if eq else word, [k.split("=")[0] for k in known], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{config} does not know the argument word {word!r}.{hint} It takes "
                             f"{', '.join(known) or 'no argument'} (comma-separated).")
    return ConfigArgs(choice=choice if choice is not None else default_choice, flags=frozenset(seen),
                      options=values)


def apply_runlocal(c: ml_collections.ConfigDict, *, num_train_steps: int = 60, batch_size: int | None = None):
    """Shrinks a config to a quick smoke run (a minute or so on a laptop CPU)."""
    c.num_train_steps = num_train_steps
    if batch_size is not None:
        c.batch_size = batch_size
    c.log_every_steps = 10
    c.checkpoint_every_steps = 0
    return c


def he2016_cifar_resnet(dataset: str, model: str, arg=None):
    """He et al. 2016 (Sec. 4.2) CIFAR ResNet recipe: SGD momentum 0.9, weight decay 1e-4, batch 128, lr 0.1
    divided by 10 at 32k and 48k iterations, 64k iterations, crop + flip augmentation. ``arg``: "runlocal"
    (50 steps, batch 64) and/or "bf16" (bfloat16 compute)."""
    args = parse_arg(arg, flags=("runlocal", "bf16"), config=f"{model}_{dataset}.py")
    c = base_config()
    c.dataset = dataset
    c.model = model
    c.num_train_steps = 64000
    c.batch_size = 128
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.schedule = "step"
    c.lr_boundaries_steps = (32000, 48000)
    c.lr_decay_factor = 0.1
    c.augment = True
    c.log_every_steps = 200
    c.checkpoint_every_steps = 2000
    if "bf16" in args:
        c.dtype = "bfloat16"
    if "runlocal" in args:
        apply_runlocal(c, num_train_steps=50, batch_size=64)
    return c
