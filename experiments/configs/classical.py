r"""Classical pipeline: JAX descriptors -> SVM / random forest / MLP, KMeans clustering, G&W texture table.

    python -m experiments.main --config=experiments/configs/classical.py:fashion_mnist --workdir=/tmp/classical_fm
    python -m experiments.main --config=experiments/configs/classical.py:digits,runlocal --workdir=/tmp/cl_digits

ARG: dataset (digits | mnist | fashion_mnist), optionally ",runlocal" for a quick run (1000 train / 500 test
images, smaller models). Runs cnnlab.jobs.classical.run: each pipeline is fitted on 90% of the training subset,
one is chosen on the other 10% (validation), then its test accuracy is reported. Writes config.json, results.json
(cnnlab.jobs.workdir's schema: test.accuracy and timing of the chosen pipeline, chosen = method, classifier,
features, validation_accuracy; details = every pipeline), results.md and descriptors.png, pipelines.png,
confusion.png, textures.png; prints the headline and the paths last. Expected (tables in docs/classical.md):
digits chosen random_forest/pixels, validation 0.9931, test 0.9638 (svm/pixels 0.9861, svm/descriptors 0.7883),
47 s job wall time on a 2-core Xeon (55 s with imports). Measured before the validation hold-out (best row by
test, so optimistic): MNIST random_forest/both 0.961 (svm/pixels 0.949, svm/descriptors 0.804); Fashion-MNIST
svm/both 0.866 (svm/pixels 0.863, svm/descriptors 0.758), about 27 min (MNIST) and 18 min (Fashion-MNIST) on a
loaded 2-core machine; runlocal about 1 min.
"""

import ml_collections

from experiments.configs import common

DATASETS = ("digits", "mnist", "fashion_mnist")


def get_config(arg=None):
    args = common.parse_arg(arg, choices=DATASETS, default_choice="fashion_mnist", config="classical.py")
    dataset, runlocal = args.choice, "runlocal" in args

    c = ml_collections.ConfigDict()
    c.kind = "classical"
    c.dataset = dataset
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.seed = 0
    # Subsets (0 = all): 10,000 training images keep the SVM on raw pixels to a few minutes on 2 cores;
    # digits is small enough to use whole.
    c.train_size = 0 if dataset == "digits" else 10_000
    c.test_size = 0
    # Share of the training subset held out (stratified) to choose the best pipeline; the test split is used only
    # to report the accuracy of what was chosen.
    c.validation_fraction = 0.1
    c.connectivity = 8
    c.levels = 256
    c.feature_sets = ("descriptors", "pixels", "both", "topological", "geometric", "statistical")
    c.classifiers = ("svm", "random_forest", "mlp")          # on descriptors, pixels, both
    c.family_classifiers = ("svm", "random_forest")          # on each descriptor family alone
    c.cluster_feature_sets = ("descriptors", "pixels", "both")
    c.svm_c = 10.0
    c.forest_trees = 200
    c.mlp_hidden = (256,)
    c.mlp_max_iter = 200
    if runlocal:
        c.train_size = 1000
        c.test_size = 500
        c.forest_trees = 50
        c.mlp_hidden = (64,)
        c.mlp_max_iter = 100
    return c
