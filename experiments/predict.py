"""Classify image files with a trained run: its best checkpoint, its own preprocessing, its class names.

    python -m experiments.predict --workdir=DIR IMAGE [IMAGE ...] [--top=5] [--json] [--invert] [--seed=S]

DIR is the --workdir of a finished (or still running) training run of experiments/main.py (of a run over several
seeds, ``config.seeds``: DIR and --seed=S, or DIR/seed_<n>). Each image is
converted to the run's input as its evaluation saw images (grey or RGB; resized to the dataset's size, or for
ImageNet-style datasets the shorter side resized and the centre cropped; zero padding and normalisation as in
training), and the top classes are printed with their probabilities. ``--json`` prints one JSON object instead:
{"workdir", "model", "dataset", "seed", "checkpoint_step", "eval_accuracy", "preprocessing", "images": [{"image",
"predictions": [{"class", "index", "probability"}, ...], "warnings": [...]}, ...]}.

MNIST-style runs (digits, mnist, fashion_mnist) were trained on light shapes on a dark background: for dark ink on
white paper pass ``--invert``. See docs/predict_export.md.

A user error (a missing, unreadable or non-image file, a workdir without config.json or checkpoints, a bad flag)
prints one line on stderr and exits with status 2, before any prediction is printed; nothing is written anywhere.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags, logging  # noqa: E402

# This command's own flags, apart from absl's global ones: experiments.main defines --workdir and --verbose there,
# and a test process imports both commands.
FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's --workdir (config.json and checkpoints/).",
                               flag_values=FLAGS)
_TOP = flags.DEFINE_integer("top", 5, "How many classes to print per image (at most the class count).",
                            lower_bound=1, flag_values=FLAGS)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object (for programs) instead of text.", flag_values=FLAGS)
_INVERT = flags.DEFINE_bool("invert", False, "Invert the pixels (255 - x) first: dark ink on white paper for "
                            "MNIST-style runs.", flag_values=FLAGS)
_SEED = flags.DEFINE_integer("seed", None, "For a run over several seeds (config.seeds): the seed whose model to "
                             "use.", flag_values=FLAGS)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks of user errors, and INFO logs.", flag_values=FLAGS)


class CommandLineError(Exception):
    """A bad flag or a missing argument."""


def parse(own_flags: flags.FlagValues, argv: list[str], doc: str, required: tuple[str, ...]) -> list[str]:
    """Parses ``own_flags`` out of ``argv``; returns [program, positional arguments...]. ``--help`` prints ``doc``
    and the flags and exits 0; a bad or missing flag raises ``CommandLineError``."""
    if any(a in ("-h", "--help", "-help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(doc.strip() + "\n\nFlags:\n" + own_flags.get_help())
        sys.exit(0)
    if own_flags.is_parsed():  # an earlier call in this process: back to the defaults
        own_flags.unparse_flags()
    try:
        remaining = own_flags(argv)
    except flags.Error as error:
        raise CommandLineError(str(error)) from None
    unknown = [a for a in remaining[1:] if a.startswith("--")]
    if unknown:
        raise CommandLineError(f"unknown flag(s) {unknown}; see --help.")
    missing = [f"--{name}" for name in required if own_flags[name].value is None]
    if missing:
        raise CommandLineError(f"{' and '.join(missing)} must be given; see --help.")
    return remaining


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (reported in one line, exit 2), not a bug."""
    from cnnlab.jobs.workdir import WorkdirError
    from cnnlab.train import CheckpointError

    return (CommandLineError, ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, WorkdirError, CheckpointError)


def report_errors(command: Callable[[], None], verbose: Callable[[], bool]) -> int:
    """Runs ``command``; a user error is one line on stderr and status 2, Ctrl-C status 130, else 0."""
    try:
        command()
    except SystemExit:  # --help: before the next clause, whose error types import cnnlab (seconds)
        raise
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr, flush=True)
        return 130
    except user_error_types() as error:
        if verbose():
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


def _predict_and_print(argv: list[str]) -> None:
    images = parse(FLAGS, argv, __doc__, required=("workdir",))[1:]
    if not images:
        raise CommandLineError("name one or more image files: python -m experiments.predict --workdir=DIR IMAGE ...")
    if not _VERBOSE.value:
        logging.set_verbosity(logging.WARNING)
    from cnnlab.jobs import predict

    for path in images:  # a mistyped file name fails at once, before the model is restored
        predict.check_image_file(path)
    trained = predict.load_trained(_WORKDIR.value, seed=_SEED.value)
    results = predict.predict_images(trained, images, top=_TOP.value, invert=_INVERT.value)
    if _JSON.value:
        print(json.dumps({"workdir": trained.workdir, "model": trained.model_name, "dataset": trained.dataset,
                          "seed": trained.seed, "checkpoint_step": trained.step, "eval_accuracy": trained.eval_accuracy,
                          "preprocessing": trained.preprocessing.describe(), "images": results}, indent=2))
    else:
        print(predict.format_text(trained, results))


def run(argv: list[str]) -> int:
    """The command with ``argv`` ([program, flags and images...]) in this process; returns the exit status."""
    return report_errors(lambda: _predict_and_print(argv), lambda: bool(FLAGS["verbose"].value))


def entry(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    app.run(lambda _: sys.exit(run(argv)), argv=argv[:1])  # absl's start-up (logging); the flags are ours


if __name__ == "__main__":
    entry()
