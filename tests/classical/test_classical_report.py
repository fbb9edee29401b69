"""cnnlab.report.classical: descriptor ranking and distributions, the pipelines plot, textures, results.md."""

import numpy as np
import pytest
from matplotlib.image import imread

from cnnlab import classical
from cnnlab.report import classical as classical_report


def _features():
    """Three classes; column 0 separates them, column 1 is noise, column 2 separates them but has NaN/inf."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    features = np.stack([labels * 5.0 + rng.normal(0, 0.5, 120), rng.normal(0, 1, 120),
                         labels * 1.0 + rng.normal(0, 0.5, 120), np.full(120, 7.0)], axis=1)
    features[::9, 2] = np.nan
    features[::13, 2] = np.inf
    return features, labels


def test_discriminative_order_ranks_separating_columns_first_and_survives_nan_and_constant_columns():
    features, labels = _features()
    order, scores = classical_report.discriminative_order(features, labels)
    assert list(order[:2]) == [0, 2] and scores[0] > scores[2] > scores[1]
    assert scores[3] == 0.0 and np.all(np.isfinite(scores))       # constant column: separates nothing


def test_plot_descriptor_distributions_writes_a_png(tmp_path):
    features, labels = _features()
    out = classical_report.plot_descriptor_distributions(features, labels, ["a", "b", "c", "d"],
                                                         ["zero", "one", "two"], tmp_path / "d.png",
                                                         max_descriptors=3)
    image = imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 300
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        classical_report.plot_descriptor_distributions(features, labels[:5], ["a", "b", "c", "d"], ["0"],
                                                       tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\.png"):
        classical_report.plot_descriptor_distributions(features, labels, ["a", "b", "c", "d"], ["0"], tmp_path / "x")


def test_plot_validation_scores_marks_a_chosen_row_that_exists(tmp_path):
    rows = [{"method": "svm/pixels", "validation_accuracy": 0.97, "test_accuracy": 0.96},
            {"method": "svm/descriptors", "validation_accuracy": 0.80, "test_accuracy": 0.82}]
    out = classical_report.plot_validation_scores(rows, tmp_path / "p.png")
    assert imread(out).shape[1] > 300
    with pytest.raises(ValueError, match="not one of the rows"):
        classical_report.plot_validation_scores(rows, tmp_path / "p.png", chosen_method="mlp/pixels")
    with pytest.raises(ValueError, match="at least one"):
        classical_report.plot_validation_scores([], tmp_path / "p.png")


def test_textures_figure_and_table(tmp_path):
    textures = classical.synthetic_textures(size=32, seed=0)
    table = classical.texture_table(textures)
    assert imread(classical_report.plot_textures(textures, table, tmp_path / "t.png")).shape[1] > 300
    markdown = classical_report.texture_markdown(table)
    assert markdown.splitlines()[0].startswith("| texture | mean | std |") and len(markdown.splitlines()) == 5
    assert f"| smooth | {table['smooth']['mean']:.2f} |" in markdown
