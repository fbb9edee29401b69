"""Seeds trained stacked in one program (cnnlab.train.stacked): each seed equals its single run (bit for bit with
the unrolled strategy, to 1e-6 with vmap), the seeds run writes the single-run files per seed, and a rewound
stacked run resumes to the uninterrupted run's exact parameter hashes."""

import json
import os
import shutil

import numpy as np
import pytest
from _train_helpers import tiny_config

import cnnlab.jobs
from cnnlab.jobs import seeds as seeds_lib
from cnnlab.jobs import workdir as workdir_lib
from cnnlab.train import checkpoint as checkpoint_lib
from cnnlab.train import loop, stacked

SEEDS = [3, 4, 5]
# 1 epoch = 44 steps: 20 steps end mid-epoch, with logs at 10 and 20 and one evaluation at the end.
STEPS = 20


class ListSink:
    def __init__(self):
        self.records = []

    def append(self, record):
        self.records.append(dict(record))


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "elapsed_s")} for r in records]


@pytest.mark.parametrize("strategy", [pytest.param(s, marks=pytest.mark.slow) if s == "unrolled" else s
                                      for s in stacked.STRATEGIES])
def test_each_stacked_seed_equals_its_single_run(tmp_path, strategy):
    config = tiny_config(num_train_steps=STEPS, augment=True, seed=SEEDS[0], seeds=len(SEEDS), seeds_stacked=True)
    srun = stacked.setup(config, SEEDS, strategy)
    assert np.asarray(srun.run.state.step).shape == (len(SEEDS),)
    sinks = [ListSink() for _ in SEEDS]
    with checkpoint_lib.Checkpoints(str(tmp_path / "stacked")) as checkpoints:
        outcome = stacked.train(srun, srun.run.state, checkpoints, sinks, loop.Resumed(), print_progress=False)
    predictions, labels = stacked.predict_test_split(srun.run, outcome.state, stacked=True)
    assert predictions.shape == (len(SEEDS), len(labels)) and predictions.dtype == np.int32

    for index, seed in enumerate(SEEDS):
        single_config = seeds_lib.seed_config(config, seed)
        run = loop.setup(single_config)
        sink = ListSink()
        with checkpoint_lib.Checkpoints(str(tmp_path / f"single_{seed}")) as checkpoints:
            single = loop.train(run, run.state, checkpoints, sink, loop.Resumed(), print_progress=False)
        mine = outcome.per_seed[index]
        # Parameters: the same to float32 round-off (batched vs single convolutions may sum in another order).
        differences = [float(np.max(np.abs(a - b))) for a, b in zip(jax_leaves(mine.state.params),
                                                                      jax_leaves(single.state.params))]
        if strategy != "vmap":  # the single run's computation, once per seed: bit for bit
            assert max(differences) == 0.0
        else:  # batched convolutions sum in another order: 6e-8 measured after 20 steps
            assert max(differences) <= 1e-6
        assert int(mine.state.step) == int(single.state.step) == STEPS
        # The same records at the same steps with the same keys; values to 1e-5 relative.
        ours, theirs = _without_timing(sinks[index].records), _without_timing(sink.records)
        assert [sorted(r) for r in ours] == [sorted(r) for r in theirs]
        if strategy != "vmap":
            assert ours == theirs
        for r1, r2 in zip(ours, theirs):
            for key in r1:
                assert r1[key] == pytest.approx(r2[key], rel=1e-5, abs=1e-7), (seed, r1["step"], key)
        assert mine.final_eval["eval_accuracy"] == pytest.approx(single.final_eval["eval_accuracy"], abs=2 / 359)
        single_predictions, _ = stacked.predict_test_split(run, single.state)
        assert np.mean(single_predictions == predictions[index]) >= 0.99
    # Different seeds really are different runs.
    assert not np.array_equal(predictions[0], predictions[1]) or sinks[0].records != sinks[1].records


def jax_leaves(tree):
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


def _stacked_config(**changes):
    fields = dict(num_train_steps=STEPS, checkpoint_every_steps=5, keep_checkpoints=10, seed=SEEDS[0],
                  seeds=len(SEEDS), seeds_stacked=True)
    return tiny_config(**{**fields, **changes})


def test_stacked_seeds_job_writes_single_run_files_and_resumes_exactly(tmp_path, capsys):
    workdir = tmp_path / "run"
    results = cnnlab.jobs.run(_stacked_config(), str(workdir))
    section = results["seeds"]
    assert section["stacked"] and section["values"] == SEEDS
    assert results["timing"]["train_s"] == section["per_seed"]["train_s"][0]  # one shared program
    for index in range(len(SEEDS)):
        seed_dir = workdir / f"seed_{index}"
        seed_results = workdir_lib.Workdir(seed_dir).read_results()
        assert seed_results["details"]["stacked_seeds"] == len(SEEDS)
        assert json.loads((seed_dir / "config.json").read_text())["seed"] == SEEDS[index]
        predictions, labels = workdir_lib.Workdir(seed_dir).read_predictions()
        assert seed_results["test"]["accuracy"] == pytest.approx(np.mean(predictions == labels))
        # A training record at every log and checkpoint step, an evaluation at the end: as a single run logs.
        assert [r["step"] for r in map(json.loads, open(seed_dir / "metrics.jsonl"))] == [5, 10, 15, 20, 20]
    assert section["accuracy_bootstrap"] is not None
    assert len(set(section["params_sha256"])) == len(SEEDS)

    # A rerun of the finished run rewrites nothing of the seeds.
    before = (workdir / "seed_0" / "results.json").read_text()
    cnnlab.jobs.run(_stacked_config(), str(workdir))
    assert "Already finished at step 20" in capsys.readouterr().out
    assert (workdir / "seed_0" / "results.json").read_text() == before

    # Killed after the step-10 checkpoint: remove what came later, rerun, get the same parameters bit for bit.
    killed = tmp_path / "killed"
    shutil.copytree(workdir, killed)
    for step in os.listdir(killed / "checkpoints"):
        if step.isdigit() and int(step) > 10:
            shutil.rmtree(killed / "checkpoints" / step)
    for index in range(len(SEEDS)):
        os.remove(killed / f"seed_{index}" / "results.json")
    resumed = cnnlab.jobs.run(_stacked_config(), str(killed))
    assert "Resuming the 3 stacked seeds from checkpoint step 10" in capsys.readouterr().out
    assert resumed["seeds"]["params_sha256"] == section["params_sha256"]
    assert resumed["seeds"]["per_seed"]["test_accuracy"] == section["per_seed"]["test_accuracy"]
    for index in range(len(SEEDS)):
        assert _records(killed / f"seed_{index}") == _records(workdir / f"seed_{index}")


def _records(seed_dir):
    return _without_timing([json.loads(line) for line in open(seed_dir / "metrics.jsonl")])


def test_stacked_resume_under_other_seeds_is_refused(tmp_path):
    workdir = tmp_path / "run"
    cnnlab.jobs.run(_stacked_config(num_train_steps=5), str(workdir))
    for index in range(len(SEEDS)):
        os.remove(workdir / f"seed_{index}" / "results.json")
    with pytest.raises(loop.ResumeMismatch, match=r"stacked seeds: \[3, 4, 5\] in the checkpoint, \[3, 4\] now"):
        seeds_lib.run(tiny_config(num_train_steps=5, checkpoint_every_steps=5, seed=SEEDS[0], seeds=2,
                                  seeds_stacked=True), str(workdir))
