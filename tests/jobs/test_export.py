"""The exported model (cnnlab/jobs/export.py, experiments/export.py): a jax.export file plus JSON card that a
process without cnnlab (or Flax) loads with jax and numpy alone and that gives the checkpoint's logits."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from _trained_run import trained_run

from cnnlab.jobs import export, predict
from experiments import export as export_cli

# Run in a subprocess whose imports of cnnlab and flax fail: only jax and numpy are there to load the model.
_NO_CNNLAB = '''
import importlib.abc, sys
class RefuseCnnlab(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cnnlab", "flax", "experiments"):
            raise ImportError(f"{name} is not importable in this test")
        return None
sys.meta_path.insert(0, RefuseCnnlab())
'''
_RUN_LOADED = '''
import json
model_path, images_path, out_path = sys.argv[1:4]
call, card = load_exported(model_path)
images = np.load(images_path)
np.savez(out_path, all=call(images), five=call(images[:5]), one=call(images[7:8]))
try:
    import cnnlab
    print("cnnlab imported")
except ImportError:
    print(json.dumps(card["input"]))
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "lenet5_digits.jaxexport")
    status = export_cli.run(["export", f"--workdir={run['workdir']}", f"--out={out}"])
    assert status == 0
    return out


def test_the_card_describes_input_output_classes_and_preprocessing(run, exported):
    with open(exported + ".json") as f:
        card = json.load(f)
    assert card["format"] == export.CARD_FORMAT and card["model"] == "lenet5" and card["dataset"] == "digits"
    assert card["class_names"] == [str(i) for i in range(10)] and card["num_classes"] == 10
    assert card["input"]["shape"] == [None, 8, 8, 1] and card["input"]["dtype"] == "uint8"
    assert card["output"]["shape"] == [None, 10] and card["checkpoint_step"] == 20 and card["seed"] == 0
    assert card["preprocessing"]["in_model"] == "zero-pad to 28x28, (x / 255 - mean) / std"
    assert card["preprocessing"]["host"].startswith("image -> grey (L), resized to 8x8")
    assert len(card["preprocessing"]["mean"]) == 1 and card["software"]["cnnlab"] and card["software"]["jax"]
    assert card["platforms"] == ["cpu"] and card["bytes"] == os.path.getsize(exported) > 4 * 61706


def test_loaded_without_cnnlab_it_gives_the_checkpoints_logits_for_any_batch_size(run, exported, tmp_path):
    images_path, out_path = str(tmp_path / "images.npy"), str(tmp_path / "logits.npz")
    np.save(images_path, run["images"])
    script = _NO_CNNLAB + export.LOADER + _RUN_LOADED
    # -I: no PYTHONPATH, no user site; cwd outside the repository, so only an installed cnnlab could be found,
    # and the finder above refuses it.
    done = subprocess.run([sys.executable, "-I", "-c", script, exported, images_path, out_path], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["shape"] == [None, 8, 8, 1]
    logits = np.load(out_path)
    reference = predict.load_trained(run["workdir"]).logits(run["images"])
    assert logits["all"].shape == (359, 10) and logits["all"].dtype == np.float32
    np.testing.assert_allclose(logits["all"], reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits["five"], reference[:5], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits["one"], reference[7:8], rtol=1e-5, atol=1e-5)
    # The file's accuracy on the test split is the run's.
    accuracy = np.mean(logits["all"].argmax(-1) == run["labels"])
    assert accuracy == pytest.approx(run["results"]["test"]["accuracy"], abs=1e-9)


def test_bad_output_paths_and_workdirs_are_refused_before_writing(run, tmp_path, capsys):
    capsys.readouterr()
    missing_dir = tmp_path / "no" / "model.jaxexport"
    assert export_cli.run(["export", f"--workdir={run['workdir']}", f"--out={missing_dir}"]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert export_cli.run(["export", f"--workdir={tmp_path}", f"--out={tmp_path / 'm'}"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert export_cli.run(["export", f"--workdir={run['workdir']}", f"--out={tmp_path / 'm'}",
                           "--platforms=gpu"]) == 2
    assert "unknown platform(s) ['gpu']" in capsys.readouterr().err
    assert export_cli.run(["export", f"--out={tmp_path / 'm'}"]) == 2
    assert "--workdir must be given" in capsys.readouterr().err
    assert export_cli.run(["export", f"--workdir={run['workdir']}", f"--out={tmp_path}"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []


def test_one_file_for_cpu_and_cuda_runs_here(run, tmp_path):
    # Lowering for a backend this machine lacks needs no GPU; the file still runs on the CPU.
    out = str(tmp_path / "both.jaxexport")
    card = export.export_model(run["workdir"], out, platforms=["cpu", "cuda"])
    assert card["platforms"] == ["cpu", "cuda"]
    with open(out, "rb") as f:
        loaded = jax.export.deserialize(bytearray(f.read()))
    assert loaded.platforms == ("cpu", "cuda")
    reference = predict.load_trained(run["workdir"]).logits(run["images"][:2])
    np.testing.assert_allclose(np.asarray(loaded.call(run["images"][:2])), reference, rtol=1e-5, atol=1e-5)
