"""The ``train`` job: a CNN trained by ``cnnlab.train``'s loop, with everything it writes in its workdir.

    results = train_and_evaluate(config, "runs/lenet5")    # resumes if runs/lenet5/checkpoints holds checkpoints
    summary = evaluate_checkpoint(config, "runs/lenet5")   # the best checkpoint on the eval split

Writes config.json (only once the checkpoint, if any, is known to belong to this config), metrics.jsonl
(rewritten on resume to exactly the restored history), checkpoints/, results.json (``cnnlab.jobs.workdir``'s
schema), predictions.npy and test_labels.npy (single-host runs), tensorboard/ event files, and report.md with its
plots. A rerun of a finished workdir prints "already finished" with its results and rewrites nothing.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from cnnlab import models, parallel
from cnnlab.jobs import workdir as workdir_lib
from cnnlab.report import tensorboard, training as training_report
from cnnlab.train import loop, stacked


def _agreed(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (processes must take the same branch around collectives)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils  # multi-host only

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _tree_bytes(tree) -> int:
    return int(sum(np.dtype(leaf.dtype).itemsize * int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)))


class _RecordSink:
    """metrics.jsonl, plus the TensorBoard event files redrawn from it after every evaluation (so
    ``tensorboard --logdir`` shows a run while it trains, and exactly its restored history after a resume)."""

    def __init__(self, wd: workdir_lib.Workdir):
        self.wd = wd

    def append(self, record) -> None:
        self.wd.metrics.append(record)
        if self.wd.is_chief and "eval_accuracy" in record:
            tensorboard.write_scalars_from_metrics(self.wd.metrics.path, self.wd.file("tensorboard"))


def _results(run: loop.Run, outcome: loop.TrainOutcome, wall_s: float) -> dict:
    config, final = run.config, outcome.final_eval
    state = outcome.state
    return workdir_lib.results_record(
        kind="train", dataset=config.dataset, train_count=run.feed.num_train, test_count=final["eval_count"],
        test_accuracy=final["eval_accuracy"], test_top5_accuracy=final.get("eval_top5_accuracy"),
        test_loss=final["eval_loss"], train_s=outcome.train_s, compile_s=outcome.compile_s,
        inference_s_per_1000=outcome.inference_s_per_1000, wall_s=wall_s, model_name=config.model,
        num_params=models.count_params(state.params), model_bytes=_tree_bytes((state.params, state.batch_stats)),
        params_sha256=workdir_lib.tree_sha256({"params": state.params, "batch_stats": state.batch_stats}),
        details={"train_split": config.get("train_split", "train"), "eval_split": config.get("eval_split", "test"),
                 "steps": outcome.steps, "epochs": outcome.epochs, "eval_s": outcome.eval_s,
                 "train_images_per_s": outcome.steps * config.batch_size / max(outcome.train_s, 1e-9),
                 "devices": parallel.device_description(run.mesh),
                 "input": "streamed" if run.feed.streaming else "in memory",
                 # which convolutions ran: "onednn" (cnnlab.native), "xla" (lax), "winograd"; None: the model
                 # has no choice (LeNet-5's conv-pool blocks, AlexNet, VGG, GoogLeNet, ImageNet ResNets)
                 "conv_impl": getattr(run.model, "conv_impl", None),
                 "eval_per_class_accuracy": final["eval_per_class_accuracy"],
                 "eval_confusion": final["eval_confusion"]})


def _report(wd: workdir_lib.Workdir, run: loop.Run, outcome: loop.TrainOutcome, results: dict) -> str:
    state, names = outcome.state, list(run.info.class_names)
    image, label = run.feed.eval_example(0)
    scalars = {"test accuracy": results["test"]["accuracy"], "test loss": results["test"]["loss"],
               "test top-5 accuracy": results["test"]["top5_accuracy"], "test images": results["test"]["count"],
               "training time (s)": results["timing"]["train_s"], "compile time (s)": results["timing"]["compile_s"],
               "inference s / 1,000 images": results["timing"]["inference_s_per_1000"],
               "parameters": results["model"]["num_params"], "steps": outcome.steps, "epochs": outcome.epochs,
               "devices": results["details"]["devices"]}
    return training_report.write_training_report(
        wd.path, config=run.config, final_metrics={k: v for k, v in scalars.items() if v is not None},
        metrics_jsonl=wd.metrics.path, confusion_matrix=np.asarray(outcome.final_eval["eval_confusion"]),
        per_class_accuracy=outcome.final_eval["eval_per_class_accuracy"], class_names=names,
        first_kernel=np.asarray(jax.device_get(models.first_conv_kernel(state.params))),
        stage_maps=loop.feature_maps_of(run, state, image), image=image, image_title=f"true class: {names[label]}")


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains ``config.model`` on ``config.dataset`` in ``workdir``; returns the results record (results.json).

    Resumes from the latest checkpoint of the same run; refuses one of a different run (``loop.ResumeMismatch``)
    and a workdir another job holds (``workdir.WorkdirBusy``), before writing anything.
    """
    began = time.perf_counter()
    loop.validate_config(config)  # a bad value is reported before the workdir is created
    parallel.maybe_initialize_distributed(config)
    wd = workdir_lib.Workdir(workdir, is_chief=jax.process_index() == 0)
    with wd.locked(command=f"train {config.get('model')} on {config.get('dataset')}"):
        run = loop.setup(config)
        with loop.open_checkpoints(run, wd.file("checkpoints")) as checkpoints:
            state, resumed = loop.restore_latest(run, checkpoints)
            # Every process reads it (the workdir is shared) so all return the record; process 0's decides.
            previous = wd.read_results() if resumed.step == run.total_steps else None
            if _agreed(previous is not None):
                if wd.is_chief:
                    print(f"Already finished at step {resumed.step}: test accuracy "
                          f"{previous['test']['accuracy']:.4f}. Results: {wd.file(workdir_lib.RESULTS_FILE)}",
                          flush=True)
                return previous
            wd.write_config(config)
            wd.metrics.rewrite_until(resumed.step)
            if resumed.step and wd.is_chief:
                print(f"Resuming from checkpoint step {resumed.step} of {run.total_steps} in {checkpoints.directory}",
                      flush=True)
            outcome = loop.train(run, state, checkpoints, _RecordSink(wd), resumed)
        results = _results(run, outcome, time.perf_counter() - began)
        # Each test image's predicted class, for per-image statistics over seeds and methods (McNemar, bootstrap);
        # single-host only (the arrays of a multi-host run are not all on one host).
        predictions = stacked.predict_test_split(run, outcome.state) if jax.process_count() == 1 else None
        if wd.is_chief:
            wd.write_results(results)
            if predictions is not None:
                wd.write_predictions(*predictions)
            tensorboard.write_scalars_from_metrics(wd.metrics.path, wd.file("tensorboard"))
            if config.get("report", True):
                results["details"]["report"] = _report(wd, run, outcome, results)
                wd.write_results(results)
            print(f"Final: test accuracy {results['test']['accuracy']:.4f}  loss {results['test']['loss']:.4f}  "
                  f"training {loop.format_duration(outcome.train_s)} (+{outcome.compile_s:.1f} s compiling)",
                  flush=True)
            where = results["details"].get("report", wd.file(workdir_lib.RESULTS_FILE))
            print(f"Results: {wd.file(workdir_lib.RESULTS_FILE)}  Report: {where}", flush=True)
    return results


def evaluate_checkpoint(config, workdir: str) -> dict:
    """Evaluates the best checkpoint (highest eval_accuracy; else the latest) in ``workdir`` on the eval split.

    Returns the eval metrics plus ``step``; writes them to ``workdir/eval_results.json``. Raises
    FileNotFoundError when the workdir has no checkpoint, CheckpointError when it does not fit ``config``.
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No checkpoints in {directory}: train first with the same config and --workdir.")
    parallel.maybe_initialize_distributed(config)
    wd = workdir_lib.Workdir(workdir, is_chief=jax.process_index() == 0)
    with wd.locked(command="evaluate"):
        run = loop.setup(config)
        with loop.open_checkpoints(run, directory) as checkpoints:
            state, step, metrics = loop.restore_best(run, checkpoints)
        which = (f"the best checkpoint by eval_accuracy ({metrics['eval_accuracy']:.4f} when saved), step {step}"
                 if metrics and "eval_accuracy" in metrics else f"the latest checkpoint, step {step}")
        if wd.is_chief:
            print(f"Evaluating {which} on {config.dataset}:{config.get('eval_split', 'test')}", flush=True)
        summary = loop.evaluate(run, state)
        summary["step"] = int(step)
        path = wd.file("eval_results.json")
        if wd.is_chief:
            workdir_lib.write_json(path, summary)
            print(f"Checkpoint step {step}: eval_accuracy {summary['eval_accuracy']:.4f}  eval_loss "
                  f"{summary['eval_loss']:.4f}", flush=True)
            print(f"Results: {path}", flush=True)
    return summary
