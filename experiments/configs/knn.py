r"""Exact k-nearest neighbours: cross-validated choice of k and metric, then test accuracy.

    python -m experiments.main --config=experiments/configs/knn.py:fashion_mnist --workdir=/tmp/knn_fm
    python -m experiments.main --config=experiments/configs/knn.py:digits,runlocal --workdir=/tmp/knn_digits

ARG: dataset (fashion_mnist | mnist | digits | cifar10), optionally ",runlocal" for a quick run.
Cross-validation (5 folds, k in 1..15 (1..9 with runlocal), L1 and L2) runs on a seeded subsample of the
training split (cv_train_size; digits uses all of it), because it searches folds x metrics times; the chosen
(k, metric) is then tested on the full test split against the full training split. Writes config.json,
results.json, results.md, neighbours.png, regions.png, cv_accuracy.png. Expected (measured on 2 shared CPU cores,
see docs/knn.md): fashion_mnist about 0.86 test accuracy (L1), mnist about 0.97 (L2), digits about 0.98-0.99;
cifar10 needs the CIFAR files, which this machine does not have (run reports how to install them).
"""

import ml_collections

from experiments.configs import common

DATASETS = ("fashion_mnist", "mnist", "digits", "cifar10")


def get_config(arg=None):
    args = common.parse_arg(arg, choices=DATASETS, default_choice="fashion_mnist", config="knn.py")
    dataset, runlocal = args.choice, "runlocal" in args

    c = ml_collections.ConfigDict()
    c.kind = "knn"
    c.dataset = dataset
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.seed = 0
    c.ks = (1, 3, 5, 7, 9) if runlocal else (1, 3, 5, 7, 9, 11, 15)
    c.metrics = ("l1", "l2")
    c.folds = 5
    c.tie_break = "nearest"
    # Training images the cross-validation uses (0 = all). 10,000 keeps 5 folds x 2 metrics to minutes on 2 CPU
    # cores; the final test always searches the full training split.
    c.cv_train_size = 0 if dataset == "digits" else (2_000 if runlocal else 10_000)
    c.test_size = 0 if not runlocal or dataset == "digits" else 1_000  # 0 = the full test split
    c.query_batch = 1_000
    c.memory_budget_bytes = 1 << 30
    c.num_shown_queries = 6
    c.num_shown_neighbours = 10
    return c
