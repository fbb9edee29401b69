"""Classical descriptors, kNN and CNNs side by side on the same data split: one table, one plot.

    python -m experiments.main --config=experiments/configs/compare.py:fashion_mnist --workdir=/tmp/cnnlab/compare_fashion_mnist
    python -m experiments.main --config=experiments/configs/compare.py:digits,runlocal --workdir=/tmp/cnnlab/compare_digits

ARG is DATASET[,runlocal] with DATASET one of digits, mnist, fashion_mnist, cifar10 (default fashion_mnist).
Every method trains on the dataset's "train" split and is scored once on its "test" split: kNN picks k and the
metric by cross-validation inside the train split, the classical pipeline picks its classifier on a validation
part of the train split, and the CNNs train a fixed recipe for a fixed number of epochs and are scored after
their last epoch (no checkpoint is chosen by test accuracy). Each method runs in DIR/<method> with its own
config, checkpoints and results.json; rerunning the command skips the methods that are done.

Writes DIR/comparison.md, DIR/comparison.json and DIR/comparison.png (accuracy against training time).
``--config.seeds=5`` runs every method over seeds 0..4 and adds the statistics (mean +/- std, 95% CI, paired t
tests, McNemar, comparison_seeds.png; docs/compare.md).
Expected ordering (the lecture's story): classical < kNN < LeNet-5 <= ResNet-20 in test accuracy, at rising
training cost. Measured results and times: docs/compare.md. ``runlocal`` shrinks every job (subsets, few steps)
to a few minutes on 2 CPU cores; its numbers are a smoke test, not the comparison.
"""

import importlib

import ml_collections

from experiments.configs import common

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")


def _parse(arg):
    args = common.parse_arg(arg, choices=DATASETS, default_choice="fashion_mnist", config="compare.py")
    return args.choice, "runlocal" in args


def _config_module(name):
    """experiments/configs/<name>.py as a module, or None if that experiment config does not exist."""
    try:
        return importlib.import_module(f"experiments.configs.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"experiments.configs.{name}":
            raise
        return None


def _same_split(job, dataset):
    """Every CNN trains on "train" and is evaluated on "test", the split every other method uses."""
    job.dataset = dataset
    job.train_split = "train"
    job.eval_split = "test"
    return job


def classical_job(dataset, runlocal):
    """The classical engineer's pipeline config (experiments/configs/classical.py), scored on the full test split.

    None for datasets it does not cover (cifar10).
    """
    module = _config_module("classical")
    if module is None or dataset not in getattr(module, "DATASETS", ()):
        return None
    job = module.get_config(f"{dataset},runlocal" if runlocal else dataset)
    job.test_size = 0               # the whole test split, as every other method
    # The comparison's classical contender: SVM / random forest / MLP on descriptors, pixels, or both. The
    # one-family-at-a-time runs and the clustering are the classical experiment's own analysis.
    job.feature_sets = ("descriptors", "pixels", "both")
    job.cluster_feature_sets = ()
    return job


def knn_job(dataset, runlocal):
    """The kNN engineer's config (experiments/configs/knn.py): k and metric by cross-validation on the train
    split, then the whole test split against the whole train split."""
    module = _config_module("knn")
    if module is None or dataset not in getattr(module, "DATASETS", ()):
        return None
    job = module.get_config(f"{dataset},runlocal" if runlocal else dataset)
    job.test_size = 0               # the whole test split, as every other method
    return job


def lenet5_job(dataset, runlocal):
    """LeNet-5 with the training engineer's recipe for this dataset (experiments/configs/lenet5_<dataset>.py)."""
    module = _config_module(f"lenet5_{dataset}")
    if module is not None:
        job = module.get_config("runlocal" if runlocal else None)
    else:  # no experiment config for this dataset: the MNIST-style recipe (Adam, a few epochs)
        job = common.base_config()
        job.model = "lenet5"
        job.num_epochs = 10
        job.optimizer = "adam"
        job.learning_rate = 1e-3
        job.schedule = "cosine"
        job.steps_per_dispatch = 4
        if runlocal:
            common.apply_runlocal(job, num_train_steps=60)
    if dataset == "digits":
        job.image_size = 28  # LeNet-5 takes 28x28 or 32x32: the 8x8 digits are zero-padded
    return _same_split(job, dataset)


def resnet20_job(dataset, runlocal):
    """The CIFAR ResNet-20 (He et al. 2016, 0.27 M parameters): the small ResNet that suits 8x8 to 32x32 inputs.

    CIFAR-10 uses experiments/configs/resnet20_cifar10.py when it exists; the grey datasets use the paper's
    optimiser (SGD, momentum 0.9, weight decay 1e-4, peak lr 0.1) with a cosine schedule over fewer epochs.
    """
    module = _config_module(f"resnet20_{dataset}")
    if module is not None:
        job = module.get_config("runlocal" if runlocal else None)
    else:
        job = common.base_config()
        job.model = "resnet20"
        job.optimizer = "sgd"
        job.learning_rate = 0.1
        job.momentum = 0.9
        job.nesterov = True
        job.weight_decay = 1e-4
        job.schedule = "cosine"
        job.warmup_epochs = 0.5
        job.batch_size = 128
        job.steps_per_dispatch = 4
        job.log_every_steps = 100
        job.checkpoint_every_steps = 500
        # Crops help every dataset; horizontal flips would turn digits into other symbols.
        job.augment = dataset in ("fashion_mnist", "cifar10")
        job.augment_flip = dataset in ("fashion_mnist", "cifar10")
        job.num_epochs = {"digits": 15, "mnist": 4, "fashion_mnist": 6, "cifar10": 30}[dataset]
        if dataset == "digits":
            job.batch_size = 64
            job.eval_batch_size = 360
            job.log_every_steps = 23
        if runlocal:
            common.apply_runlocal(job, num_train_steps=40, batch_size=64)
            job.warmup_epochs = 0.0  # half an epoch would be longer than the whole quick run
    return _same_split(job, dataset)


def get_config(arg=None):
    dataset, runlocal = _parse(arg)
    config = ml_collections.ConfigDict()
    config.kind = "compare"
    config.dataset = dataset
    config.runlocal = runlocal
    config.command = ("python -m experiments.main --config=experiments/configs/compare.py:"
                      f"{dataset}{',runlocal' if runlocal else ''} --workdir=DIR")
    config.split_description = ("fit on the 'train' split (kNN and classical choose their hyperparameters by "
                                "validation inside it), scored once on the 'test' split")
    jobs = {"classical": classical_job(dataset, runlocal),
            "knn": knn_job(dataset, runlocal),
            "lenet5": lenet5_job(dataset, runlocal),
            "resnet20": resnet20_job(dataset, runlocal)}
    config.jobs = ml_collections.ConfigDict({name: job for name, job in jobs.items() if job is not None})
    config.methods = tuple(name for name, job in jobs.items() if job is not None)
    return config
