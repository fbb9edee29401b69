"""Training: the loop (``loop.setup``, ``loop.restore_latest``, ``loop.train``), its state, steps and checkpoints.

The whole job, with its workdir files, is ``cnnlab.jobs.train_and_evaluate(config, workdir)``.

Modules: state.py (TrainState, optimizers, schedules), steps.py (jitted train/eval steps), checkpoint.py (Orbax),
loop.py (the loop and evaluation).
"""

from cnnlab.train.checkpoint import CheckpointError
from cnnlab.train.loop import ResumeMismatch, TrainingInterrupted, validate_config

__all__ = ["CheckpointError", "ResumeMismatch", "TrainingInterrupted", "validate_config"]
