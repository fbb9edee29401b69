"""The training run's report: arrays in, files out (curves, confusion matrix, filters, feature maps, report.md)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from cnnlab.report import confusion, curves, feature_maps, filters, run_report


def write_training_report(workdir: str, *, config, final_metrics: Mapping, metrics_jsonl: str,
                          confusion_matrix: np.ndarray, per_class_accuracy: Sequence[float],
                          class_names: Sequence[str], first_kernel: np.ndarray,
                          stage_maps: Mapping[str, np.ndarray] | None = None, image: np.ndarray | None = None,
                          image_title: str | None = None) -> str:
    """Writes curves.png, confusion.png, filters.png, feature_maps.png (when ``stage_maps``) and report.md.

    Args:
      workdir: the run directory.
      config: the run's config (shown in the report).
      final_metrics: scalar figures for the report's table.
      metrics_jsonl: path of the run's metrics.jsonl (the curves).
      confusion_matrix: int [C, C], rows the true class.
      per_class_accuracy: C accuracies; class_names: C names.
      first_kernel: the first convolution's kernel [kh, kw, cin, cout].
      stage_maps: {stage name: activations [H, W, C]} of ``image`` (uint8 [H, W, C]), titled ``image_title``.
    Returns the path of report.md.
    """
    title = f"{config.get('model', '')} on {config.get('dataset', '')}"
    plots = {
        "Loss and accuracy": curves.plot_curves(metrics_jsonl, os.path.join(workdir, "curves.png"), title=title),
        "Confusion matrix (eval split)": confusion.plot_confusion(np.asarray(confusion_matrix), list(class_names),
                                                                  os.path.join(workdir, "confusion.png")),
        "First-layer filters": filters.plot_filters(np.asarray(first_kernel), os.path.join(workdir, "filters.png")),
    }
    if stage_maps:
        plots["Feature maps of the first eval image"] = feature_maps.plot_feature_maps(
            stage_maps, os.path.join(workdir, "feature_maps.png"), image=image, title=image_title)
    return run_report.write_report(workdir, config=config, final_metrics=final_metrics, plots=plots,
                                   per_class_accuracy=list(per_class_accuracy), class_names=list(class_names))
