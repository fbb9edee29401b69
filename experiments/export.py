"""Export a trained run as one file that runs with jax and numpy alone (jax.export StableHLO, weights inside).

    python -m experiments.export --workdir=DIR --out=FILE [--platforms=cpu,cuda] [--seed=S]

Writes FILE (the serialized ``jax.export.Exported``: the best checkpoint's network in eval mode with the run's
padding and normalisation in front; uint8 images [N, H, W, C] in, any N; float32 logits [N, classes] out) and
FILE.json (class names, input shape and dtype, the host-side preprocessing, the dataset, checkpoint step,
cnnlab and jax versions). ``--platforms`` lowers for several backends at once (default: this machine's). The
loader, a dozen lines of jax and numpy, is in docs/predict_export.md.

A user error (a workdir without config.json or checkpoints, an output directory that does not exist, a bad flag)
prints one line on stderr and exits with status 2; nothing is written then.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags, logging  # noqa: E402

from experiments.predict import CommandLineError, parse, report_errors  # noqa: E402

FLAGS = flags.FlagValues()  # this command's own flags (see experiments/predict.py)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's --workdir (config.json and checkpoints/).",
                               flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "The file to write (FILE.json is written beside it).", flag_values=FLAGS)
_PLATFORMS = flags.DEFINE_list("platforms", [], "Backends to lower for: cpu, cuda, rocm, tpu (default: this "
                               "machine's).", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", None, "For a run over several seeds (config.seeds): the seed whose model to "
                             "export.", flag_values=FLAGS)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks of user errors, and INFO logs.", flag_values=FLAGS)


def _export_and_print(argv: list[str]) -> None:
    rest = parse(FLAGS, argv, __doc__, required=("workdir", "out"))
    if len(rest) > 1:
        raise CommandLineError(f"unexpected arguments {rest[1:]}; the command takes only flags.")
    if not _VERBOSE.value:
        logging.set_verbosity(logging.WARNING)
    from cnnlab.jobs import export

    card = export.export_model(_WORKDIR.value, _OUT.value, platforms=_PLATFORMS.value or None, seed=_SEED.value)
    out = os.path.abspath(_OUT.value)
    shape = "x".join("N" if d is None else str(d) for d in card["input"]["shape"])
    print(f"Exported {card['model']} on {card['dataset']} (checkpoint step {card['checkpoint_step']}) for "
          f"{', '.join(card['platforms'])}: uint8 [{shape}] -> float32 logits [N, {card['num_classes']}]")
    print(f"Model: {out} ({card['bytes']:,} bytes)")
    print(f"Card:  {out}.json")


def run(argv: list[str]) -> int:
    """The command with ``argv`` ([program, flags...]) in this process; returns the exit status."""
    return report_errors(lambda: _export_and_print(argv), lambda: bool(FLAGS["verbose"].value))


def entry(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    app.run(lambda _: sys.exit(run(argv)), argv=argv[:1])  # absl's start-up (logging); the flags are ours


if __name__ == "__main__":
    entry()
