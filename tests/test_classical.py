"""The classical pipeline: descriptor matrix, sklearn pipelines, clustering scores, textures, the experiment job."""

import json

import numpy as np
import pytest

from cnnlab import classical, descriptors


def _digits(count=300):
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = (bunch.images[:count] * 255.0 / 16.0).round().astype(np.uint8)[..., None]
    return images, bunch.target[:count]


def test_descriptor_matrix_columns_and_padding():
    images, _ = _digits(128)
    direct = descriptors.describe(images)
    matrix, names = classical.descriptor_matrix(images[:100])     # one batch of 128, the last 28 rows padding
    assert matrix.shape == (100, len(descriptors.NAMES)) and names == list(descriptors.NAMES)
    for j, name in enumerate(names):
        np.testing.assert_allclose(matrix[:, j], np.asarray(direct[name][:100], np.float64), rtol=1e-5, atol=1e-9,
                                   equal_nan=True)
    only, only_names = classical.descriptor_matrix(images[:100], families=("statistical",))
    assert only_names == list(descriptors.FAMILIES["statistical"]) and only.shape == (100, 6)
    np.testing.assert_array_equal(only, matrix[:, -6:])
    with pytest.raises(ValueError, match="Unknown descriptor families"):
        classical.descriptor_matrix(images, families=("colour",))
    with pytest.raises(ValueError, match=r"\[N, H, W, 1\]"):
        classical.descriptor_matrix(images[..., 0])


def test_classifiers_learn_digits_and_impute_non_finite_values():
    images, labels = _digits(400)
    features, _ = classical.descriptor_matrix(images)
    features[::7, 0] = np.nan
    features[::11, 1] = np.inf
    for name in classical.CLASSIFIERS:
        model = classical.make_classifier(name, seed=0, forest_trees=30, mlp_hidden=(32,), mlp_max_iter=300)
        scores = classical.fit_and_score(model, features[:300], labels[:300], features[300:], labels[300:])
        assert scores["test_accuracy"] > 0.35, (name, scores)         # chance is 0.1
        assert scores["train_time_s"] > 0 and scores["inference_s_per_1000"] > 0
    with pytest.raises(ValueError, match="Unknown classifier"):
        classical.make_classifier("knn")


def test_purity_and_clustering_scores():
    assert classical.purity([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert classical.purity([0, 0, 1, 1], [5, 5, 5, 5]) == 0.5
    assert classical.purity([0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 1]) == pytest.approx(4 / 6)   # 1 + 3 of 6
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 50)
    points = rng.normal(0, 0.1, (150, 2)) + np.array([[0, 0], [5, 5], [0, 9]])[labels]
    scores = classical.clustering_scores(points, labels, num_clusters=3, seed=0)
    assert scores["adjusted_rand_index"] == pytest.approx(1.0) and scores["purity"] == 1.0


def test_texture_table_orders_the_textures_as_the_lecture():
    textures = classical.synthetic_textures(size=64, seed=0)
    table = classical.texture_table(textures)
    assert table["smooth"]["std"] < table["regular"]["std"] < table["coarse"]["std"]
    assert table["smooth"]["smoothness"] < table["regular"]["smoothness"] < table["coarse"]["smoothness"]
    assert table["regular"]["entropy"] < table["coarse"]["entropy"]
    for stats in table.values():
        assert stats["smoothness"] == pytest.approx(1 - 1 / (1 + stats["std"] ** 2 / 255**2), rel=1e-4)


def test_run_experiment_end_to_end_on_digits(tmp_path):
    from experiments.configs import classical as classical_config

    config = classical_config.get_config("digits,runlocal")
    config.train_size = 400     # describe batches of 512 and 128, compiled already by the tests above
    config.test_size = 100
    config.classifiers = ("svm", "random_forest")
    config.family_classifiers = ("svm",)
    config.forest_trees = 20
    results = classical.run_experiment(config, str(tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["best"]["method"] == results["best"]["method"]
    assert set(saved["best"]) == {"method", "validation_accuracy", "test_accuracy", "train_time_s",
                                  "inference_s_per_1000"}
    # The best pipeline is chosen on validation accuracy (held out from train), never on the test split.
    best_row = max(saved["classifiers"], key=lambda r: r["validation_accuracy"])
    assert saved["best"]["method"] == best_row["method"]
    assert saved["best"]["test_accuracy"] == best_row["test_accuracy"]
    assert (saved["train_size"], saved["validation_size"], saved["test_size"]) == (360, 40, 100)
    methods = {r["method"] for r in saved["classifiers"]}
    assert "svm/descriptors" in methods and "random_forest/both" in methods and "svm/topological" in methods
    assert len(saved["clustering"]) == 3 and saved["test_size"] == 100
    assert json.loads((tmp_path / "config.json").read_text())["kind"] == "classical"
    assert (tmp_path / "textures.png").stat().st_size > 1000
    assert "| svm | descriptors (29) |" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="Unknown dataset"):
        classical_config.get_config("cifar10")
