"""The report plots: each writes a real PNG of sensible size and rejects bad input with a clear error."""

import json

import matplotlib.image
import numpy as np
import pytest

from cnnlab.report import confusion, curves, feature_maps, filters

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    """Checks the PNG signature and returns the decoded image [H, W, 3 or 4]."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[-1] in (3, 4)
    return image


def assert_sensible_size(image, min_side=250, max_side=2500):
    height, width = image.shape[:2]
    assert min_side <= height <= max_side and min_side <= width <= max_side, image.shape
    # Not a blank canvas: a plot has many distinct colours.
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 20


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def training_records():
    records = []
    for step in range(10, 210, 10):
        records.append({"step": step, "train_loss": 2.3 * np.exp(-step / 80), "train_accuracy": 1 - np.exp(-step / 60)})
        if step % 50 == 0:
            records.append({"step": step, "epoch": step // 50, "eval_loss": 2.0 * np.exp(-step / 90),
                            "eval_accuracy": 0.9 - 0.5 * np.exp(-step / 50), "eval_top5_accuracy": 0.99})
    return records


# ---------------------------------------------------------------------------------------------- curves


def test_read_metrics_and_series(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", training_records())
    records = curves.read_metrics(path)
    assert len(records) == 24
    accuracy = curves.metric_series(records, "accuracy")
    assert list(accuracy) == ["train_accuracy", "eval_accuracy", "eval_top5_accuracy"]
    steps, values = accuracy["eval_accuracy"]
    assert steps == [50, 100, 150, 200]
    np.testing.assert_allclose(values, 0.9 - 0.5 * np.exp(-np.array(steps) / 50))
    assert list(curves.metric_series(records, "loss")) == ["train_loss", "eval_loss"]


def test_metric_series_last_record_for_a_step_wins(tmp_path):
    # A run resumed from a checkpoint logs the steps after the checkpoint again.
    records = [{"step": 1, "train_loss": 3.0}, {"step": 2, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5}]
    assert curves.metric_series(records, "loss") == {"train_loss": ([1, 2], [3.0, 1.5])}


def test_plot_curves_writes_png(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", training_records())
    out = curves.plot_curves(path, tmp_path / "plots" / "curves.png", title="lenet5 on mnist")
    assert out == str(tmp_path / "plots" / "curves.png")
    assert_sensible_size(read_png(out))


def test_plot_curves_eval_only(tmp_path):
    path = write_metrics(tmp_path / "metrics.jsonl", [{"step": 5, "eval_loss": 1.0}, {"step": 10, "eval_loss": 0.5}])
    assert_sensible_size(read_png(curves.plot_curves(path, tmp_path / "c.png")))


def test_plot_curves_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="No metrics file"):
        curves.plot_curves(tmp_path / "missing.jsonl", tmp_path / "c.png")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        curves.plot_curves(empty, tmp_path / "c.png")
    no_step = write_metrics(tmp_path / "no_step.jsonl", [{"train_loss": 1.0}])
    with pytest.raises(ValueError, match="no integer 'step'"):
        curves.plot_curves(no_step, tmp_path / "c.png")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 1, "train_loss": 1.0}\n{"step": 2, "train_lo\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2 is not valid JSON"):
        curves.plot_curves(broken, tmp_path / "c.png")
    not_object = tmp_path / "list.jsonl"
    not_object.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        curves.read_metrics(not_object)
    no_metrics = write_metrics(tmp_path / "no_metrics.jsonl", [{"step": 1, "learning_rate": 0.1}])
    with pytest.raises(ValueError, match="no loss or accuracy values.*learning_rate"):
        curves.plot_curves(no_metrics, tmp_path / "c.png")
    with pytest.raises(ValueError, match="must end in .png"):
        curves.plot_curves(write_metrics(tmp_path / "ok.jsonl", training_records()), tmp_path / "c.jpg")
    with pytest.raises(ValueError, match="Unknown metric kind"):
        curves.metric_series([], "precision")
    assert not (tmp_path / "c.png").exists()


# ---------------------------------------------------------------------------------------------- confusion


def test_confusion_matrix_counts_and_normalisation():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2], dtype=np.int32)
    predictions = np.array([0, 0, 1, 1, 1, 2, 0, 2, 2], dtype=np.int32)
    matrix = confusion.confusion_matrix(labels, predictions, 4)
    np.testing.assert_array_equal(matrix, [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(confusion.row_normalize(matrix),
                               [[2 / 3, 1 / 3, 0, 0], [0, 1, 0, 0], [0.25, 0, 0.75, 0], [0, 0, 0, 0]])
    per_class = confusion.per_class_accuracy(matrix)
    np.testing.assert_allclose(per_class[:3], [2 / 3, 1.0, 0.75])
    assert np.isnan(per_class[3])


def test_confusion_matrix_bad_input():
    with pytest.raises(ValueError, match="lie in \\[0, 3\\)"):
        confusion.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="equal length"):
        confusion.confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(TypeError, match="integer class ids"):
        confusion.confusion_matrix(np.array([0.0]), np.array([0]), 3)


@pytest.mark.parametrize("num_classes", [3, 10, 100])
def test_plot_confusion_writes_png(tmp_path, num_classes):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, 2000)
    predictions = np.where(rng.random(2000) < 0.8, labels, rng.integers(0, num_classes, 2000))
    matrix = confusion.confusion_matrix(labels, predictions, num_classes)
    names = [f"class {i}" for i in range(num_classes)]
    out = confusion.plot_confusion(matrix, names, tmp_path / f"confusion{num_classes}.png")
    image = read_png(out)
    assert_sensible_size(image)
    assert image.shape[1] > image.shape[0]  # counts and normalised side by side


def test_plot_confusion_bad_input(tmp_path):
    out = tmp_path / "c.png"
    with pytest.raises(ValueError, match="square"):
        confusion.plot_confusion(np.zeros((3, 4)), ["a", "b", "c"], out)
    with pytest.raises(ValueError, match="square"):
        confusion.plot_confusion(np.zeros(9), ["a", "b", "c"], out)
    with pytest.raises(ValueError, match="2 class names for a 3x3"):
        confusion.plot_confusion(np.eye(3), ["a", "b"], out)
    with pytest.raises(ValueError, match="non-negative"):
        confusion.plot_confusion(-np.eye(3), ["a", "b", "c"], out)
    with pytest.raises(TypeError, match="real counts"):
        confusion.plot_confusion(np.array([["a"]]), ["a"], out)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- filters


def test_normalize_filters_per_filter():
    kernel = np.zeros((2, 2, 1, 3), np.float32)
    kernel[..., 0] = [[[-1.0], [1.0]], [[0.0], [0.0]]]
    kernel[..., 1] = [[[10.0], [20.0]], [[30.0], [40.0]]]  # a different scale: still spans [0, 1]
    normalized = filters.normalize_filters(kernel)
    np.testing.assert_allclose(normalized[..., 0, 0], [[0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(normalized[..., 0, 1], [[0.0, 1 / 3], [2 / 3, 1.0]])
    np.testing.assert_allclose(normalized[..., 2], 0.5)  # constant filter: mid grey


@pytest.mark.parametrize("shape", [(5, 5, 1, 6), (3, 3, 3, 16), (7, 7, 3, 96), (3, 3, 4, 8)])
def test_plot_filters_writes_png(tmp_path, shape):
    kernel = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    out = filters.plot_filters(kernel, tmp_path / "filters.png")
    assert_sensible_size(read_png(out), min_side=150)


def test_plot_filters_bad_input(tmp_path):
    out = tmp_path / "f.png"
    with pytest.raises(ValueError, match=r"\[kh, kw, cin, cout\]; got rank 3"):
        filters.plot_filters(np.zeros((5, 5, 6)), out)
    with pytest.raises(ValueError, match="NaN"):
        filters.plot_filters(np.full((3, 3, 1, 2), np.nan), out)
    with pytest.raises(ValueError, match="empty dimension"):
        filters.plot_filters(np.zeros((3, 3, 1, 0)), out)
    with pytest.raises(ValueError, match="max_filters"):
        filters.plot_filters(np.zeros((3, 3, 1, 2)), out, max_filters=0)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- feature maps


def test_stages_from_intermediates_flattens_and_orders():
    intermediates = {"stage10": (np.ones((1, 2, 2, 4)),), "stage2": (np.zeros((1, 4, 4, 8)),),
                     "block": {"stage1": (np.ones((1, 8, 8, 2)),)}}
    stages = feature_maps.stages_from_intermediates(intermediates)
    assert list(stages) == ["block/stage1", "stage2", "stage10"]
    assert stages["stage2"].shape == (1, 4, 4, 8)
    with pytest.raises(ValueError, match="empty"):
        feature_maps.stages_from_intermediates({})
    with pytest.raises(TypeError, match="mapping"):
        feature_maps.stages_from_intermediates([np.ones(3)])


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_feature_maps_writes_png(tmp_path, channels):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (28, 28, channels), dtype=np.uint8)
    stages = {"stage1": rng.normal(size=(1, 28, 28, 6)), "stage2": rng.normal(size=(10, 10, 16)),
              "stage3": rng.normal(size=(1, 2, 2, 120))}
    out = feature_maps.plot_feature_maps(stages, tmp_path / "fm.png", image=image[None])
    assert_sensible_size(read_png(out))
    # Without the input row the figure has one row fewer, so it is shorter.
    shorter = read_png(feature_maps.plot_feature_maps(stages, tmp_path / "fm2.png"))
    assert shorter.shape[0] < read_png(out).shape[0]


def test_plot_feature_maps_bad_input(tmp_path):
    out = tmp_path / "fm.png"
    good = {"stage1": np.ones((4, 4, 2))}
    with pytest.raises(ValueError, match="batch of 2"):
        feature_maps.plot_feature_maps({"stage1": np.ones((2, 4, 4, 2))}, out)
    with pytest.raises(ValueError, match="got rank 2"):
        feature_maps.plot_feature_maps({"dense": np.ones((1, 120))}, out)
    with pytest.raises(ValueError, match="is empty"):
        feature_maps.plot_feature_maps({}, out)
    with pytest.raises(TypeError, match="dict of stage name"):
        feature_maps.plot_feature_maps([np.ones((4, 4, 2))], out)
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\)"):
        feature_maps.plot_feature_maps(good, out, image=np.ones((4, 4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        feature_maps.plot_feature_maps({"stage1": np.full((4, 4, 2), np.nan)}, out)
    assert not out.exists()
