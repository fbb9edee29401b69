"""report.md: the final metrics, per-class accuracy, config and relative plot links, and its bad inputs."""

import os

import ml_collections
import numpy as np
import pytest

from cnnlab.report import run_report


def make_config():
    config = ml_collections.ConfigDict()
    config.kind = "train"
    config.dataset = "mnist"
    config.model = "lenet5"
    config.num_epochs = 12
    config.learning_rate = 0.0125
    config.optimizer = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9, "nesterov": True})
    config.milestones = (4, 8)
    return config


def test_write_report_contains_numbers_config_and_links(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    confusion_png = tmp_path / "confusion.png"
    confusion_png.write_bytes(b"\x89PNG\r\n\x1a\n")
    metrics = {"eval_accuracy": 0.99123456, "eval_loss": 0.0281234, "train_time_s": 73.25, "num_params": 61706,
               "eval_top5_accuracy": np.float32(0.9999), "device": "1 x cpu (cpu), 1 process"}
    path = run_report.write_report(
        tmp_path, config=make_config(), final_metrics=metrics,
        plots={"Loss and accuracy": "plots/curves.png", "Confusion matrix": str(confusion_png)},
        per_class_accuracy=[0.995, 0.25, float("nan")], class_names=["zero", "one", "two"])
    assert path == os.path.join(str(tmp_path), "report.md")
    text = open(path, encoding="utf-8").read()
    assert text.startswith("# Run report: lenet5 on mnist")
    assert "| eval_accuracy | 0.991235 (99.12%) |" in text
    assert "| eval_loss | 0.0281234 |" in text
    assert "| train_time_s | 73.25 |" in text
    assert "| num_params | 61706 |" in text
    assert "| device | 1 x cpu (cpu), 1 process |" in text
    assert "| eval_top5_accuracy | 0.9999 (99.99%) |" in text
    assert "| zero | 0.995 (99.50%) |" in text and "| one | 0.25 (25.00%) |" in text
    assert "| two | no examples |" in text
    # Plots are linked relative to the workdir, absolute paths included.
    assert "![Loss and accuracy](plots/curves.png)" in text
    assert "![Confusion matrix](confusion.png)" in text
    # Config: dotted keys in a table and the full JSON.
    assert "| optimizer.momentum | 0.9 |" in text
    assert "| optimizer.nesterov | True |" in text
    assert "| learning_rate | 0.0125 |" in text
    assert "| milestones | [4, 8] |" in text
    assert '"num_epochs": 12' in text
    assert not os.path.exists(path + ".tmp")


def test_write_report_per_class_mapping_and_plain_dict_config(tmp_path):
    path = run_report.write_report(tmp_path, config={"model": "knn", "k": 3}, final_metrics={"test_accuracy": 0.5},
                                   per_class_accuracy={"cat": 0.4, "dog": 0.6}, title="kNN")
    text = open(path, encoding="utf-8").read()
    assert text.startswith("# kNN\n")
    assert "| cat | 0.4 (40.00%) |" in text and "| dog | 0.6 (60.00%) |" in text
    assert "| k | 3 |" in text
    assert "## Plots" not in text


def test_write_report_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_report.write_report(tmp_path / "nope", config={}, final_metrics={"a": 1})
    with pytest.raises(ValueError, match="final_metrics is empty"):
        run_report.write_report(tmp_path, config={}, final_metrics={})
    with pytest.raises(TypeError, match="final_metrics must be a dict"):
        run_report.write_report(tmp_path, config={}, final_metrics=[0.9])
    with pytest.raises(TypeError, match="ConfigDict or a dict"):
        run_report.write_report(tmp_path, config=["lr", 0.1], final_metrics={"a": 1})
    with pytest.raises(FileNotFoundError, match="Plot 'Curves' points to"):
        run_report.write_report(tmp_path, config={}, final_metrics={"a": 1}, plots={"Curves": "curves.png"})
    with pytest.raises(ValueError, match="3 values but class_names has 2"):
        run_report.write_report(tmp_path, config={}, final_metrics={"a": 1}, per_class_accuracy=[1, 1, 1],
                                class_names=["a", "b"])
    assert not (tmp_path / "report.md").exists()


def test_format_number():
    assert run_report.format_number(3) == "3"
    assert run_report.format_number(np.int64(7)) == "7"
    assert run_report.format_number(0.1 + 0.2) == "0.3"
    assert run_report.format_number(np.float32(0.25)) == "0.25"
    assert run_report.format_number(True) == "True"
    assert run_report.format_number("sgd") == "sgd"
    assert run_report.format_number([1, np.float64(2.5)]) == "[1, 2.5]"
