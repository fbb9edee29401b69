"""The classical job end to end on sklearn's digits: results.json field by field, figures, the last two lines."""

import json
import math

import pytest

from cnnlab.jobs import classical as classical_job
from cnnlab.jobs import workdir as workdir_lib
from experiments.configs import classical as classical_config


def _tiny_config():
    config = classical_config.get_config("digits,runlocal")
    config.train_size = 300         # describe batches of 512 and 128: few compilations
    config.test_size = 100
    config.feature_sets = ("descriptors", "pixels", "both", "topological")
    config.classifiers = ("svm", "random_forest")
    config.family_classifiers = ("svm",)
    config.cluster_feature_sets = ("descriptors",)
    config.forest_trees = 10
    return config


def test_classical_job_on_digits_writes_the_results_schema_figures_and_two_final_lines(tmp_path, capsys):
    config = _tiny_config()
    returned = classical_job.run(config, str(tmp_path))
    out_lines = capsys.readouterr().out.strip().splitlines()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(returned))
    workdir_lib.check_results(saved)

    assert saved["schema_version"] == workdir_lib.SCHEMA_VERSION
    assert (saved["kind"], saved["dataset"]) == ("classical", "digits")
    assert saved["splits"] == {"train": 270, "validation": 30, "test": 100}   # 90% / 10% of 300; 100 test
    rows = saved["details"]["classifiers"]
    assert [r["method"] for r in rows] == ["svm/descriptors", "random_forest/descriptors", "svm/pixels",
                                           "random_forest/pixels", "svm/both", "random_forest/both",
                                           "svm/topological"]
    # Chosen on validation (first of equals in config order), never on test.
    best = max(rows, key=lambda r: r["validation_accuracy"])
    assert saved["chosen"] == {"method": best["method"], "classifier": best["classifier"],
                               "features": best["features"], "validation_accuracy": best["validation_accuracy"]}
    assert saved["chosen_text"] == f"{best['classifier']} on {best['features']}"
    assert saved["test"]["accuracy"] == best["test_accuracy"] and saved["test"]["count"] == 100
    assert saved["test"]["top5_accuracy"] is None and saved["test"]["loss"] is None
    assert sum(map(sum, saved["details"]["test_confusion"])) == 100
    assert sum(saved["details"]["test_confusion"][i][i] for i in range(10)) == round(100 * best["test_accuracy"])

    timing = saved["timing"]
    for name in ("train_s", "compile_s", "inference_s_per_1000", "wall_s"):
        assert math.isfinite(timing[name]) and timing[name] >= 0, name
    assert timing["inference_s_per_1000"] == best["inference_s_per_1000"]
    descriptor_train_s = saved["details"]["descriptor_s_per_1000_images"] * 270 / 1000
    expected_train_s = best["train_time_s"] + (0 if best["features"] == "pixels" else descriptor_train_s)
    assert timing["train_s"] == pytest.approx(expected_train_s)
    assert timing["wall_s"] >= timing["train_s"]
    assert saved["model"]["name"] == "classical" and saved["model"]["num_params"] is None
    assert saved["model"]["bytes"] > 0
    assert {"cpu_model", "usable_cores", "logical_cores", "memory_gib", "jax_backend", "jax_devices",
            "process_count"} <= set(saved["machine"])
    assert {"python", "jax", "jaxlib", "flax", "optax", "numpy", "sklearn", "cnnlab"} <= set(saved["software"])
    assert len(saved["details"]["clustering"]) == 1 and len(saved["details"]["descriptor_names"]) == 29

    for name in ("descriptors.png", "pipelines.png", "confusion.png", "textures.png"):
        assert (tmp_path / name).stat().st_size > 5000, name
        assert f"]({name})" in (tmp_path / "results.md").read_text()
    assert saved["details"]["plots"] == classical_job.FIGURES
    assert json.loads((tmp_path / "config.json").read_text())["kind"] == "classical"

    assert out_lines[-2] == (f"Classical on digits: chosen {best['classifier']} on {best['features']} (validation "
                             f"{best['validation_accuracy']:.4f}), test accuracy {best['test_accuracy']:.4f}")
    assert out_lines[-1] == f"Results: {tmp_path / 'results.json'}  Report: {tmp_path / 'results.md'}"
    assert sum(line.startswith("[classical] digits") for line in out_lines) == len(rows)


def test_classical_job_refuses_a_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "not_a_dir"
    path.write_text("x")
    with pytest.raises(workdir_lib.WorkdirError, match="is a file"):
        classical_job.run(_tiny_config(), str(path))
