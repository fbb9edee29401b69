"""Training: ``train_and_evaluate(config, workdir)`` and ``evaluate_checkpoint(config, workdir)``.

    from cnnlab.train import train_and_evaluate
    results = train_and_evaluate(config, "/tmp/run")   # resumes if /tmp/run/checkpoints holds checkpoints

Modules: state.py (TrainState, optimizers, schedules), steps.py (jitted train/eval steps), checkpoint.py (Orbax),
loop.py (the loop, evaluation, results and report).
"""

from cnnlab.train.checkpoint import CheckpointError
from cnnlab.train.loop import evaluate_checkpoint, train_and_evaluate, validate_config

__all__ = ["train_and_evaluate", "evaluate_checkpoint", "validate_config", "CheckpointError"]
