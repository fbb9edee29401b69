"""The comparison plot: labels that collide with nothing, error bars from the seeds' spread; the "ran on" text."""

import itertools
import json
import math
import pathlib

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.transforms import Bbox

from cnnlab.report import comparison

REPO = pathlib.Path(__file__).resolve().parents[2]
FASHION_MNIST = REPO / "docs" / "results" / "compare_fashion_mnist" / "comparison.json"

# The digits comparison, where kNN and the classical pipeline are close in both time and accuracy.
DIGITS = [
    {"method": "knn", "kind": "knn", "test_accuracy": 0.9889, "train_time_s": 8.0},
    {"method": "classical", "kind": "classical", "test_accuracy": 0.9638, "train_time_s": 7.5},
    {"method": "lenet5", "kind": "train", "test_accuracy": 0.9749, "train_time_s": 3.0},
    {"method": "resnet20", "kind": "train", "test_accuracy": 0.9777, "train_time_s": 40.0},
]
# The worst case for the old fixed offset: two methods at almost the same time and accuracy.
NEAR_TIES = [
    {"method": "knn", "kind": "knn", "test_accuracy": 0.8608, "train_time_s": 7.3},
    {"method": "classical", "kind": "classical", "test_accuracy": 0.8641, "train_time_s": 7.5},
    {"method": "svm", "kind": "classical", "test_accuracy": 0.8625, "train_time_s": 7.9},
    {"method": "lenet5", "kind": "train", "test_accuracy": 0.909, "train_time_s": 34.0},
]


def fashion_mnist_methods():
    return json.loads(FASHION_MNIST.read_text())["methods"]


def drawn_boxes(fig):
    """The labels' text boxes and the markers' boxes, in display pixels, after drawing."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    labels = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    radius = math.sqrt(comparison._MARKER_AREA) / 2 * fig.dpi / 72
    markers = []
    for collection in ax.collections:
        for x, y in ax.transData.transform(collection.get_offsets()):
            markers.append(Bbox.from_extents(x - radius, y - radius, x + radius, y + radius))
    return ax, labels, markers


def overlaps(a, b):
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("methods", [fashion_mnist_methods(), DIGITS, NEAR_TIES], ids=["fashion", "digits", "ties"])
def test_labels_collide_with_nothing(methods):
    fig = comparison.comparison_figure(methods, title="comparison")
    ax, labels, markers = drawn_boxes(fig)
    assert len(labels) == len(methods)
    for method in methods:
        assert any(text.startswith(method["method"] + "\n") for text in labels)
    for (a_text, a), (b_text, b) in itertools.combinations(labels.items(), 2):
        assert not overlaps(a, b), f"{a_text!r} overlaps {b_text!r}"
    for text, box in labels.items():
        for marker in markers:
            assert not overlaps(box, marker), f"{text!r} covers a marker"
        axes_box = ax.get_window_extent()
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 and axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1


def test_labels_give_accuracy_and_points_sit_at_time_and_accuracy():
    fig = comparison.comparison_figure(DIGITS)
    (ax,) = fig.axes
    assert sorted(t.get_text() for t in ax.texts) == sorted(
        ["knn\n98.89%", "classical\n96.38%", "lenet5\n97.49%", "resnet20\n97.77%"])
    points = np.array(sorted(tuple(p) for c in ax.collections for p in c.get_offsets()))
    np.testing.assert_allclose(points, sorted([(8.0, 98.89), (7.5, 96.38), (3.0, 97.49), (40.0, 97.77)]))
    assert ax.get_xscale() == "log"


def test_error_bars_when_std_given(tmp_path):
    with_std = [dict(m, test_accuracy_std=0.004) if m["kind"] == "train" else m for m in DIGITS]
    fig = comparison.comparison_figure(with_std)
    (ax,) = fig.axes
    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = bars.lines[2]
    spans = sorted((s[0][1], s[1][1]) for s in segments.get_segments())
    np.testing.assert_allclose(spans, [(97.49 - 0.4, 97.49 + 0.4), (97.77 - 0.4, 97.77 + 0.4)])
    assert "lenet5\n97.49% \u00b1 0.40" in [t.get_text() for t in ax.texts]
    # The labels keep clear of the error bars too.
    _, labels, _ = drawn_boxes(fig)
    for segment in segments.get_segments():
        (x0, y0), (x1, y1) = ax.transData.transform(segment)
        bar = Bbox.from_extents(x0 - 1, y0, x1 + 1, y1)
        assert not any(overlaps(box, bar) for box in labels.values())
    assert not [c for c in comparison.comparison_figure(DIGITS).axes[0].containers
                if isinstance(c, ErrorbarContainer)]
    out = comparison.plot_comparison(with_std, tmp_path / "plots" / "comparison.png", title="digits, 5 seeds")
    assert out == str(tmp_path / "plots" / "comparison.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_zero_training_time_is_drawn_at_one_millisecond():
    fig = comparison.comparison_figure([{"method": "knn", "kind": "knn", "test_accuracy": 0.5, "train_time_s": 0.0}])
    (offset,) = fig.axes[0].collections[0].get_offsets()
    assert tuple(offset) == pytest.approx((1e-3, 50.0))


def test_bad_input(tmp_path):
    good = DIGITS[0]
    cases = [
        ([], "non-empty list"),
        (good, "non-empty list"),
        ([{"method": "x", "kind": "knn"}], r"lacks \['test_accuracy', 'train_time_s'\]"),
        ([dict(good, kind="cnn")], "kind 'cnn'; use one of"),
        ([dict(good, test_accuracy=98.89)], "as a fraction"),
        ([dict(good, train_time_s=-1.0)], "negative train_time_s"),
        ([dict(good, train_time_s=float("nan"))], "finite number"),
        ([dict(good, test_accuracy_std=2.0)], "test_accuracy_std 2.0"),
        ([dict(good, test_accuracy="high")], "finite number"),
    ]
    for methods, message in cases:
        with pytest.raises(ValueError, match=message):
            comparison.plot_comparison(methods, tmp_path / "c.png")
    with pytest.raises(ValueError, match="must end in .png"):
        comparison.plot_comparison(DIGITS, tmp_path / "c.pdf")
    assert not (tmp_path / "c.png").exists()
