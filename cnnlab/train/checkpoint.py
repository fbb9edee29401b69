"""Orbax checkpoints of the train state, in ``workdir/checkpoints``.

Each checkpoint step holds two items: ``state`` (the TrainState as a state dict of arrays, saved with
``ocp.args.StandardSave``) and ``meta`` (JSON: what the state belongs to: model, dataset, classes, input shape, and
the config fingerprint fields). Saving is asynchronous: ``save`` returns once the arrays are copied off the
devices, and the files are written in a background thread; a step directory only appears under its final name
once complete, so a process killed while saving leaves the previous checkpoints intact.

The manager keeps the latest ``keep`` checkpoints plus the best one by ``eval_accuracy`` (the metric attached to
epoch-end checkpoints).

Restoring goes against an abstract tree of ``jax.ShapeDtypeStruct`` with the current run's shardings, so a
checkpoint written on N devices loads on M. Before restoring, the checkpoint's ``meta`` and array shapes are
compared with the current run; any mismatch or unreadable file raises ``CheckpointError`` naming the step
directory and what to do: nothing is silently skipped or overwritten.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from cnnlab.train.state import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run (corrupt, or written by a different model/data/shape)."""


def _state_to_dict(state: TrainState) -> dict[str, Any]:
    """TrainState -> nested dict of arrays (typed key stored as its uint32 key data)."""
    return flax.serialization.to_state_dict(state.replace(rng=jax.random.key_data(state.rng)))


def _abstract_key_data(rng):
    """ShapeDtypeStruct of the key data of a (possibly abstract) typed key."""
    shape = tuple(rng.shape) + tuple(jax.eval_shape(lambda k: jax.random.key_data(k), rng).shape[len(rng.shape):])
    return jax.ShapeDtypeStruct(shape, np.uint32, sharding=getattr(rng, "sharding", None))


def _short(error: Exception, limit: int = 300) -> str:
    """``Type: message`` cut to ``limit`` characters (tensorstore errors append a long JSON spec)."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else text[:limit] + " ..."


def _flatten_with_paths(tree) -> dict[str, Any]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpoints:
    """The run's checkpoint directory.

    Args:
      directory: ``workdir/checkpoints`` (created if missing).
      keep: how many of the latest checkpoints to keep (the best by eval accuracy is kept as well).
      async_save: write files in a background thread.
    """

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=max(int(keep), 1)),
            checkpoint_managers.BestN(get_metric_fn=lambda m: m["eval_accuracy"], reverse=False, n=1,
                                      keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, best_fn=lambda m: m["eval_accuracy"], best_mode="max",
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        try:
            # Handlers registered up front, so a fresh process can read a checkpoint's metadata before restoring.
            registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
            state_handler, meta_handler = ocp.StandardCheckpointHandler(), ocp.JsonCheckpointHandler()
            for args_type, handler in ((ocp.args.StandardSave, state_handler), (ocp.args.StandardRestore, state_handler)):
                registry.add("state", args_type, handler)
            for args_type in (ocp.args.JsonSave, ocp.args.JsonRestore):
                registry.add("meta", args_type, meta_handler)
            self.manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)
        except Exception as e:  # noqa: BLE001 - re-raised with the directory and what to do
            raise CheckpointError(
                f"Cannot open the checkpoint directory {self.directory}: {_short(e)}. It is corrupt or "
                "not an Orbax checkpoint directory; move it away or use another --workdir.") from e

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the highest eval_accuracy, or the latest step if none carries metrics."""
        return self.manager.best_step()

    def metrics(self, step: int) -> dict | None:
        return self.manager.metrics(step)

    def save(self, step: int, state: TrainState, meta: dict, metrics: dict | None = None) -> None:
        """Saves ``state`` at ``step`` (asynchronously); ``metrics`` (e.g. eval_accuracy) ranks it for 'best'."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(_state_to_dict(state)),
                                  meta=ocp.args.JsonSave(dict(meta, step=int(step))))
        self.manager.save(int(step), args=args, metrics=metrics, force=True)

    def read_meta(self, step: int) -> dict:
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            return dict(restored["meta"])
        except Exception as e:  # noqa: BLE001
            raise self._error(step, f"its metadata cannot be read ({_short(e)})") from e

    def restore(self, step: int, template: TrainState, shardings, expected_meta: dict) -> TrainState:
        """Restores the state saved at ``step`` onto ``shardings``, after checking it fits this run.

        Args:
          step: the checkpoint step.
          template: a TrainState (concrete or abstract) of this run: gives structure, shapes and dtypes.
          shardings: TrainState-shaped pytree of shardings to place the arrays on (any device count).
          expected_meta: this run's meta dict; the keys present in both must agree.
        """
        meta = self.read_meta(step)
        differences = {k: (meta[k], v) for k, v in expected_meta.items() if k in meta and meta[k] != v}
        if differences:
            described = ", ".join(f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in differences.items())
            raise self._error(step, f"it was written by a different experiment ({described})")

        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), template.replace(
            rng=_abstract_key_data(template.rng)), shardings.replace(rng=shardings.rng))
        target_dict = flax.serialization.to_state_dict(target)
        self._check_shapes(step, target_dict)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target_dict)))
            state_dict = restored["state"]
        except Exception as e:  # noqa: BLE001
            raise self._error(step, f"its arrays cannot be read ({_short(e)})") from e
        key_impl = jax.random.key_impl(template.rng) if hasattr(template.rng, "dtype") and jax.dtypes.issubdtype(
            template.rng.dtype, jax.dtypes.prng_key) else None
        state = flax.serialization.from_state_dict(template.replace(rng=None), {**state_dict, "rng": None})
        rng = jax.random.wrap_key_data(state_dict["rng"], impl=key_impl)
        return state.replace(rng=rng)

    def _check_shapes(self, step: int, target_dict) -> None:
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise self._error(step, f"its array metadata cannot be read ({_short(e)})") from e
        if saved is None:
            raise self._error(step, "its array metadata is missing")
        want = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in _flatten_with_paths(target_dict).items()}
        have = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in _flatten_with_paths(saved).items()
                if hasattr(v, "shape")}
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        mismatched = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if missing or extra or mismatched:
            parts = []
            if missing:
                parts.append(f"missing arrays {missing[:5]}")
            if extra:
                parts.append(f"unexpected arrays {extra[:5]}")
            if mismatched:
                parts.append("shape/dtype differences " + ", ".join(
                    f"{k}: checkpoint {have[k]} vs this run {want[k]}" for k in mismatched[:5]))
            raise self._error(step, "it does not match this run's model (" + "; ".join(parts) + ")")

    def _error(self, step: int, why: str) -> CheckpointError:
        return CheckpointError(
            f"Checkpoint {os.path.join(self.directory, str(step))} cannot be restored: {why}. It was not changed. "
            "Use another --workdir for a different experiment, or move the checkpoints directory away to start "
            "over.")

    def restore_or_explain(self, step: int, template: TrainState, shardings, expected_meta: dict) -> TrainState:
        """``restore``, but when the arrays of ``step`` cannot be read, the error also names the newest intact
        earlier checkpoint and the command that resumes from it (moving the damaged step aside)."""
        try:
            return self.restore(step, template, shardings, expected_meta)
        except CheckpointError as error:
            if "cannot be read" not in str(error) and "is missing" not in str(error):
                raise  # a checkpoint of another run, not a damaged one
            intact = self._newest_intact_before(step, template, shardings, expected_meta)
            damaged = os.path.join(self.directory, str(step))
            way_out = (f"The newest intact checkpoint is step {intact}: to resume from it, run "
                       f"`mv {damaged} {damaged}.damaged` and rerun the same command." if intact is not None else
                       "No earlier intact checkpoint exists: move the checkpoints directory away to start over.")
            raise CheckpointError(f"Checkpoint step {step} in {self.directory} is damaged ({error}). {way_out}") from error

    def _newest_intact_before(self, step: int, template, shardings, expected_meta) -> int | None:
        for earlier in sorted((s for s in self.all_steps() if s < step), reverse=True):
            try:
                self.restore(earlier, template, shardings, expected_meta)
                return earlier
            except CheckpointError:
                continue
        return None

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> bool:
        try:
            self.wait()  # a pending asynchronous save (the last good state) always completes
        finally:
            self.close()
        return False

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
