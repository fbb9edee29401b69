"""Multi-host for real: two processes on localhost (jax.distributed, gloo CPU collectives, 4 devices each).

Each process is ``_multihost_worker.py`` started with the environment a cluster launcher gives (coordinator address,
process count, process id), so the run goes through ``parallel.maybe_initialize_distributed`` exactly as on a
SLURM or TPU-pod job. The training test checks the 2 x 4-device run against one process with 8 devices.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from _multihost_worker import augmented_digest, batch_digest, global_test_images
from _train_helpers import committed_steps, orbax_tmp_dirs, records, tiny_config

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_multihost_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(WORKER)))
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 4
# One epoch of 44 steps (batch 32: 16 rows per process), checkpoints at steps 22 and 44. The gradient all-reduce
# sums in a different order on 2 x 4 and 1 x 8 devices (as on 1 and 8 devices of one process): the losses differ
# by ~1e-7 relative per step, and this tiny run amplifies that to 1e-3 within a second epoch, or within 20 steps
# with augmentation (it then sits on the loss plateau). So: one epoch, no augmentation here; the collectives test
# checks exactly that augmentation does not depend on the device layout.
RUN_FIELDS = {"num_devices": 0, "num_epochs": 1, "augment": False, "checkpoint_every_steps": 22,
              "keep_checkpoints": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(tmp_path, mode: str, *extra: str, timeout: float) -> list[dict]:
    """Starts the worker processes of one run and returns what each wrote; kills them all on any failure."""
    port = _free_port()
    procs, logs = [], []
    try:
        for index in range(NUM_PROCESSES):
            env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES=str(NUM_PROCESSES), JAX_PROCESS_ID=str(index),
                       XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}")
            log = open(tmp_path / f"{mode}_{index}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, mode, str(tmp_path / f"{mode}_{index}.json"), *extra],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        for proc in procs:
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {mode} workers ran past {timeout} s; logs: {_tails(tmp_path, mode)}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker and anything it started
                proc.wait()
        for log in logs:
            log.close()
    codes = [proc.returncode for proc in procs]
    assert codes == [0] * NUM_PROCESSES, f"worker exit codes {codes}; logs: {_tails(tmp_path, mode)}"
    outputs = []
    for index in range(NUM_PROCESSES):
        with open(tmp_path / f"{mode}_{index}.json") as f:
            outputs.append(json.load(f))
    return outputs


def _tails(tmp_path, mode: str) -> str:
    parts = []
    for index in range(NUM_PROCESSES):
        path = tmp_path / f"{mode}_{index}.log"
        text = path.read_text() if path.exists() else "(no log)"
        parts.append(f"\n--- process {index} ---\n{text[-3000:]}")
    return "".join(parts)


def test_two_processes_put_their_rows_in_one_global_batch_and_reduce_across_processes(tmp_path):
    import jax

    from cnnlab import parallel

    outputs = _run_workers(tmp_path, "collectives", timeout=120)
    # The same preprocessing in this single process (8 devices): augmentation depends on the global row only.
    mesh = parallel.make_data_mesh()
    single_digest = augmented_digest(parallel.put_host_batch({"image": global_test_images()}, mesh)["image"], mesh)
    assert jax.process_count() == 1
    for index, out in enumerate(outputs):
        assert out["initialized"] and out["process_index"] == index
        assert (out["process_count"], out["device_count"], out["local_device_count"]) == (2, 8, 4)
        assert out["global_shape"] == [16, 8, 8, 1]
        # This process's devices hold exactly the rows it put, at their global positions [8 i, 8 i + 8).
        assert out["local_rows"] == out["placed_rows"] == [float(r) for r in range(8 * index, 8 * index + 8)]
        assert out["total"] == sum(range(16))  # the sum of both processes' rows, on both processes
        assert out["augmented_digest"] == single_digest


@pytest.mark.slow
def test_two_process_training_matches_one_process_writes_once_and_restores_on_one_host(tmp_path):
    from cnnlab import data
    from cnnlab.data import pipeline
    from cnnlab.jobs import evaluate_checkpoint, train_and_evaluate

    workdir = tmp_path / "run"
    config_json = tmp_path / "fields.json"
    config_json.write_text(json.dumps(RUN_FIELDS))
    outputs = _run_workers(tmp_path, "train", str(workdir), str(config_json), timeout=240)
    config = tiny_config(**RUN_FIELDS)
    assert [(o["process_index"], o["process_count"], o["device_count"]) for o in outputs] == [(0, 2, 8), (1, 2, 8)]

    # (1) The same run as one process with the 8 devices and the same global batch of 32.
    single = train_and_evaluate(config, str(tmp_path / "single"))
    multi = json.loads((workdir / "results.json").read_text())
    assert multi["machine"]["process_count"] == 2 and multi["details"]["devices"] == "8 x cpu (cpu), 2 processes"
    for out in outputs:  # both processes computed the same results (process 1 returns them without writing)
        assert out["results_test"] == multi["test"]
    assert multi["test"]["count"] == single["test"]["count"] == 359
    assert multi["test"]["accuracy"] == pytest.approx(single["test"]["accuracy"], abs=1.5 / 359)
    assert multi["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=1e-5)
    multi_records, single_records = records(str(workdir)), records(str(tmp_path / "single"))
    assert [r["step"] for r in multi_records] == [r["step"] for r in single_records]
    for m, s in zip(multi_records, single_records):
        for key in ("train_loss", "eval_loss"):
            if key in s:
                assert m[key] == pytest.approx(s[key], rel=1e-5), (m["step"], key)

    # (2) Each process fed exactly its own half of every global batch: rows [16 i, 16 i + 16) of the
    # training batches, [60 i, 60 i + 60) of the evaluation batches (padded last batch included).
    train_split, test_split = data.load("digits", "train"), data.load("digits", "test")
    halves = {}
    for index, out in enumerate(outputs):
        calls = out["fed"]
        train_calls = [c for c in calls if c["shuffle"] is not False]
        assert [(c["epoch"], c["start_batch"], len(c["digests"])) for c in train_calls] == [(0, 0, 44)]
        assert len(calls) - len(train_calls) == 2  # the epoch-end evaluation and the timed one
        for call in calls:
            split = train_split if call["shuffle"] is not False else test_split
            args = {k: call[k] for k in ("batch_size", "seed", "epoch", "shuffle", "drop_remainder",
                                         "start_batch") if call[k] is not None}
            own = list(pipeline.epoch_batches(split.images, split.labels, process_index=index,
                                              process_count=NUM_PROCESSES, **args))
            assert call["digests"] == [batch_digest(b) for b in own], (index, call["epoch"], call["shuffle"])
            halves.setdefault((call["epoch"], call["shuffle"]), {})[index] = (own, args, split)
    for (epoch, shuffle), by_process in halves.items():  # the halves put together are the 1-process batches
        own0, args, split = by_process[0]
        whole = list(pipeline.epoch_batches(split.images, split.labels, process_index=0, process_count=1, **args))
        assert len(whole) == len(own0) == len(by_process[1][0])
        for first, second, both in zip(own0, by_process[1][0], whole):
            for name in ("image", "label", "mask"):
                np.testing.assert_array_equal(np.concatenate([first[name], second[name]]), both[name])

    # (3) Only process 0 wrote the workdir's files; the checkpoints (written by both, through Orbax) are complete.
    run_dir, checkpoints_dir = str(workdir), str(workdir / "checkpoints")
    wrote = [{p for p in out["written"] if p == run_dir or p.startswith(run_dir + os.sep)} for out in outputs]
    assert {os.path.join(run_dir, n) for n in ("config.json", "metrics.jsonl", "results.json")} <= wrote[0]
    assert wrote[1], "process 1 wrote no checkpoint metadata: the audit hook saw nothing"
    outside_checkpoints = sorted(p for p in wrote[1] if not p.startswith(checkpoints_dir + os.sep))
    assert outside_checkpoints == [], f"process 1 wrote outside checkpoints/: {outside_checkpoints}"
    assert sorted(os.listdir(workdir)) == [".lock", "checkpoints", "config.json", "metrics.jsonl", "results.json",
                                           "tensorboard"]
    assert json.loads((workdir / "config.json").read_text())["checkpoint_every_steps"] == 22
    assert committed_steps(run_dir) == [22, 44] and orbax_tmp_dirs(run_dir) == []
    for step in (22, 44):
        state_dir = workdir / "checkpoints" / str(step) / "state"
        for index in range(NUM_PROCESSES):
            assert (state_dir / "array_metadatas" / f"process_{index}").is_file()
            assert (state_dir / f"ocdbt.process_{index}" / "manifest.ocdbt").is_file()
        assert (state_dir / "commit_success.txt").is_file()

    # A rerun of the finished run: process 0 decides (broadcast) that it is finished, both return its results, and
    # nothing of the workdir is rewritten.
    before = {n: (workdir / n).read_bytes() for n in ("config.json", "metrics.jsonl", "results.json")}
    (tmp_path / "rerun").mkdir()
    rerun = _run_workers(tmp_path / "rerun", "train", run_dir, str(config_json), timeout=240)
    assert [out["results_test"] for out in rerun] == [multi["test"]] * NUM_PROCESSES
    assert all(out["fed"] == [] for out in rerun)  # no training, no evaluation
    assert {n: (workdir / n).read_bytes() for n in before} == before
    for out in rerun:
        assert not {os.path.join(run_dir, n) for n in before} & set(out["written"])

    # (4) The 2-process checkpoint restores in this 1-process run on 8 devices and evaluates the same.
    summary = evaluate_checkpoint(config, run_dir)
    saved_eval = {r["step"]: r for r in multi_records if "eval_accuracy" in r}
    assert summary["step"] in saved_eval
    assert summary["eval_accuracy"] == pytest.approx(saved_eval[summary["step"]]["eval_accuracy"], abs=1e-12)
    assert summary["eval_loss"] == pytest.approx(saved_eval[summary["step"]]["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_stream_their_own_rows_and_match_one_process(tmp_path):
    """The streamed feed (an image folder) under 2 processes x 4 devices: each process decodes only its half of
    every global batch, and the run ends with one 8-device process's results."""
    from cnnlab.data import demo, loading
    from cnnlab.jobs import train_and_evaluate
    from cnnlab.train import feeds

    demo.write_demo_folder(tmp_path / "folder", per_class=8)
    loading.prepare_image_folder("tinyphotos", tmp_path / "folder", data_dir=tmp_path / "tfds")
    fields = dict(dataset="tinyphotos", data_dir=str(tmp_path / "tfds"), image_size=32, batch_size=16,
                  eval_batch_size=8, num_devices=0, num_epochs=1, augment=True, checkpoint_every_steps=0)
    config_json = tmp_path / "fields.json"
    config_json.write_text(json.dumps(fields))
    outputs = _run_workers(tmp_path, "stream", str(tmp_path / "run"), str(config_json), timeout=300)
    single = train_and_evaluate(tiny_config(**fields), str(tmp_path / "single"))
    multi = json.loads((tmp_path / "run" / "results.json").read_text())
    assert multi["details"]["input"] == "streamed" and multi["test"]["count"] == single["test"]["count"] == 20
    assert multi["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=1e-5)
    assert [o["results_test"] for o in outputs] == [multi["test"]] * NUM_PROCESSES

    config = tiny_config(**fields)
    info = loading.info("tinyphotos", data_dir=fields["data_dir"])
    feed = feeds.make_feed(config, info=info, data_dir=fields["data_dir"])
    for index, out in enumerate(outputs):
        calls = out["fed"]
        assert [(c["kind"], c["args"]) for c in calls] == [("train", [0]), ("eval", []), ("eval", [])]
        from cnnlab.data import streaming

        own_train = streaming.train_batches(feed.train_source, global_batch_size=16, seed=0, epoch=0, image_size=32,
                                            process_index=index, process_count=NUM_PROCESSES)
        own_eval = streaming.eval_batches(feed.eval_source, global_batch_size=8, image_size=32,
                                          process_index=index, process_count=NUM_PROCESSES)
        assert calls[0]["digests"] == [batch_digest(b) for b in own_train]
        assert calls[1]["digests"] == [batch_digest(b) for b in own_eval]
