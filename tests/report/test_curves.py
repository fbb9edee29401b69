"""Training curves: top-5 on its own panel, final values in the legend, de-duplicated steps, the seed band."""

import json
import math

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from cnnlab.report import curves


def lenet_like_records(seed=0, steps_per_epoch=469, epochs=12):
    """A 12-epoch LeNet-5-like run: train records every 100 steps, one eval record per epoch."""
    rng = np.random.default_rng(seed)
    records = []
    for step in range(100, steps_per_epoch * epochs + 1, 100):
        records.append({"step": step, "train_loss": 0.22 + 1.9 * math.exp(-step / 350),
                        "train_accuracy": 0.92 - 0.55 * math.exp(-step / 400) + rng.normal(0, 0.01),
                        "learning_rate": 0.1, "images_per_s": 9000.0})
    for epoch in range(1, epochs + 1):
        records.append({"step": epoch * steps_per_epoch, "epoch": epoch, "eval_loss": 0.42 - 0.015 * epoch,
                        "eval_accuracy": 0.85 + 0.005 * epoch + rng.normal(0, 0.002), "eval_top5_accuracy": 0.99})
    return sorted(records, key=lambda r: r["step"])


def panels(fig):
    return {ax.get_title(): ax for ax in fig.axes}


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_top5_has_its_own_panel_and_final_values_are_in_the_legend():
    records = lenet_like_records()
    fig = curves.curves_figure(records)
    axes = panels(fig)
    assert list(axes) == ["loss", "accuracy", "top-5 accuracy"]
    top1_labels = [line.get_label() for line in axes["accuracy"].get_lines()]
    assert not any("top5" in label for label in top1_labels)
    assert [line.get_label().split(" ")[0] for line in axes["top-5 accuracy"].get_lines()] == ["eval_top5_accuracy"]
    # The top-1 axis is not stretched up to 99%.
    assert axes["accuracy"].get_ylim()[1] < 98  # train accuracy peaks near 95%; top-5 is at 99%
    final = 100 * [r for r in records if "eval_accuracy" in r][-1]["eval_accuracy"]
    assert f"eval_accuracy (final {final:.2f}%)" in legend_texts(axes["accuracy"])
    # No value label drawn among the curves.
    assert all(not ax.texts for ax in fig.axes)


def test_no_top5_panel_when_not_logged():
    records = [{k: v for k, v in r.items() if k != "eval_top5_accuracy"} for r in lenet_like_records()]
    assert list(panels(curves.curves_figure(records))) == ["loss", "accuracy"]


def test_short_run_has_whole_step_ticks(tmp_path):
    records = [{"step": 10, "train_loss": 2.1, "train_accuracy": 0.31},
               {"step": 20, "train_loss": 1.6, "train_accuracy": 0.52},
               {"step": 20, "epoch": 1, "eval_loss": 1.4, "eval_accuracy": 0.58, "eval_top5_accuracy": 0.93}]
    fig = curves.curves_figure(records)
    fig.draw_without_rendering()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(t == int(t) for t in ticks), ticks
    assert "eval_accuracy (final 58.00%)" in legend_texts(panels(fig)["accuracy"])
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert curves.plot_curves(path, tmp_path / "short.png") == str(tmp_path / "short.png")


def test_duplicated_and_out_of_order_steps_are_drawn_once_in_order():
    records = [
        {"step": 100, "train_loss": 1.0}, {"step": 200, "train_loss": 0.8},
        {"step": 200, "eval_accuracy": 0.6, "eval_loss": 0.9},
        {"step": 200, "train_loss": 0.7},  # resumed run: step 200 again, this one wins
        {"step": 150, "train_loss": 0.9},  # out of order
        {"step": 200, "eval_accuracy": 0.65, "eval_loss": 0.85},
    ]
    fig = curves.curves_figure(records)
    (train_loss, eval_loss) = panels(fig)["loss"].get_lines()
    assert list(train_loss.get_xdata()) == [100, 150, 200]
    assert list(train_loss.get_ydata()) == [1.0, 0.9, 0.7]
    assert list(eval_loss.get_xdata()) == [200] and list(eval_loss.get_ydata()) == [0.85]
    (eval_accuracy,) = panels(fig)["accuracy"].get_lines()
    assert list(eval_accuracy.get_ydata()) == [65.0]


def test_latest_records_replaces_whole_records_per_step_and_kind():
    records = [{"step": 2, "train_loss": 1.0, "images_per_s": 50.0}, {"step": 1, "train_loss": 3.0},
               {"step": 2, "eval_accuracy": 0.5}, {"step": 2, "train_loss": 0.5}]
    assert curves.latest_records(records) == [
        {"step": 1, "train_loss": 3.0}, {"step": 2, "eval_accuracy": 0.5}, {"step": 2, "train_loss": 0.5}]
    assert curves.record_kind({"step": 1, "eval_loss": 1.0, "epoch": 1}) == "eval"
    assert curves.record_kind({"step": 1, "learning_rate": 0.1}) == "train"


def test_curve_band_mean_and_std_over_seeds(tmp_path):
    per_seed = [lenet_like_records(seed) for seed in range(4)]
    per_seed[3] = per_seed[3][:-5]  # a seed that stopped early: only the steps all seeds logged are drawn
    fig = curves.curve_band_figure(per_seed, metric="eval_accuracy")
    ax = fig.axes[0]
    common_steps = sorted(set.intersection(*({r["step"] for r in s if "eval_accuracy" in r} for s in per_seed)))
    values = 100 * np.array([[r["eval_accuracy"] for r in s if "eval_accuracy" in r][:len(common_steps)]
                             for s in per_seed])
    mean_line = [line for line in ax.get_lines() if line.get_label().startswith("mean of 4 seeds")]
    assert len(mean_line) == 1
    np.testing.assert_array_equal(mean_line[0].get_xdata(), common_steps)
    np.testing.assert_allclose(mean_line[0].get_ydata(), values.mean(axis=0))
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    vertices = band.get_paths()[0].vertices
    std = values.std(axis=0, ddof=1)
    top = (values.mean(axis=0) + std).max()
    bottom = (values.mean(axis=0) - std).min()
    assert vertices[:, 1].max() == pytest.approx(top) and vertices[:, 1].min() == pytest.approx(bottom)
    assert ax.get_ylabel() == "eval_accuracy (%)"
    out = curves.plot_curve_band(per_seed, tmp_path / "band.png", title="LeNet-5, 4 seeds")
    assert out == str(tmp_path / "band.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_curve_band_single_seed_has_no_band():
    ax = curves.curve_band_figure([lenet_like_records()]).axes[0]
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_curve_band_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty list"):
        curves.plot_curve_band([], tmp_path / "b.png")
    with pytest.raises(ValueError, match="Seed 1 never logged 'eval_accuracy'"):
        curves.plot_curve_band([lenet_like_records(), [{"step": 1, "train_loss": 1.0}]], tmp_path / "b.png")
    with pytest.raises(ValueError, match="share no step"):
        curves.plot_curve_band([[{"step": 1, "eval_accuracy": 0.5}], [{"step": 2, "eval_accuracy": 0.6}]],
                               tmp_path / "b.png")
    with pytest.raises(ValueError, match="single record"):
        curves.plot_curve_band([{"step": 1, "eval_accuracy": 0.5}], tmp_path / "b.png")
    with pytest.raises(ValueError, match="must end in .png"):
        curves.plot_curve_band([lenet_like_records()], tmp_path / "b.svg")
    assert not (tmp_path / "b.png").exists()
