"""Command line: list cnnlab's datasets, or prepare them.

    python -m cnnlab.data [--data_dir DIR] [--manual_dir DIR]            # list: prepared?, where, sizes
    python -m cnnlab.data prepare NAME... | --all [--force] [--data_dir DIR] [--manual_dir DIR]
    python -m cnnlab.data prepare imagenet2012 [--skip_bad]              # official tars in the manual dir
    python -m cnnlab.data prepare image_folder --name=NAME --root=DIR [--test_root=DIR | --test_fraction=F]
    python -m cnnlab.data prepare demo_photos                           # small image folder from sklearn digits
                          [--split_seed=S] [--skip_bad] [--force]
    python -m cnnlab.data bench NAME... [--repeats 3] [--json OUT]   # time prepare + load (fresh tmp dir)

`prepare --all` prepares every dataset whose raw files are present (imagenet2012 too when its tars are in
the manual dir, unless already prepared) and reports the others as skipped with their install
instructions (exit status 0); naming a dataset whose raw files are missing exits 1, and so
does any dataset whose raw files are present but unusable (e.g. 3 of the 4 IDX files), even with --all.
Each prepare prints "Preparing NAME from FILES ..." and "Prepared NAME: SIZES in SECONDS s -> DIR".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time

import tensorflow_datasets as tfds

from cnnlab.data import demo, formats, loading


def _sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{split} {count:,}" for split, count in sizes.items())


def list_datasets(data_dir, manual_dir) -> int:
    rows = loading.status(data_dir=data_dir, manual_dir=manual_dir)
    print(f"data_dir: {loading._data_dir(data_dir)}")
    for row in rows:
        state = "prepared" if row.prepared else "not prepared"
        print(f"{row.name:14s} {state:13s} {_sizes(row.split_sizes):28s} {row.path}")
        if not row.prepared:
            if row.raw_problem:
                print(f"{'':14s} raw files unusable: {row.raw_problem}")
            elif row.raw:
                print(f"{'':14s} raw files: {row.raw} -> `python -m cnnlab.data prepare {row.name}`")
            elif row.name == "digits":
                print(f"{'':14s} loads in memory from scikit-learn without preparing")
            else:
                print(f"{'':14s} raw files missing; to install: {row.install_hint}")
    for row in loading.image_status(data_dir=data_dir, manual_dir=manual_dir):
        state = "prepared" if row.prepared else "not prepared"
        kind = "JPEG, streamed" if row.name == "imagenet2012" else "image folder, streamed"
        print(f"{row.name:14s} {state:13s} {_sizes(row.split_sizes):28s} {row.path} ({kind})")
        if row.prepared:
            continue
        if row.raw_problem:
            print(f"{'':14s} raw files incomplete: {row.raw_problem}; to install: {row.install_hint}")
        elif row.raw:
            print(f"{'':14s} raw files: {row.raw} -> `python -m cnnlab.data prepare {row.name}`")
        else:
            print(f"{'':14s} raw files missing; to install: {row.install_hint}")
    print("your own images: `python -m cnnlab.data prepare image_folder --name=NAME --root=DIR "
          "[--test_root=DIR | --test_fraction=0.2]` (ROOT/<class name>/<image>.jpg|.png)")
    return 0


def prepare_image_datasets(args) -> int:
    """prepare imagenet2012 / image_folder: one dataset per call, errors on stderr, exit status 1."""
    name = args.names[0]
    shown = args.name if name == "image_folder" else name
    if name == demo.NAME:
        before = demo.NAME in loading.image_folder_names(args.data_dir)
        path = demo.ensure_prepared(args.data_dir, force=args.force)
        if before and not args.force:
            print(f"{name}: already prepared in {path} (--force prepares it again)")
        return 0
    before = {row.name: row.prepared for row in loading.image_status(data_dir=args.data_dir,
                                                                     manual_dir=args.manual_dir)}
    try:
        if name == "image_folder":
            if not args.name or not args.root:
                print("prepare image_folder: give --name=NAME and --root=DIR", file=sys.stderr)
                return 2
            path = loading.prepare_image_folder(
                args.name, args.root, test_root=args.test_root, test_fraction=args.test_fraction,
                split_seed=args.split_seed, skip_bad=args.skip_bad, data_dir=args.data_dir, force=args.force)
        else:
            path = loading.prepare(name, data_dir=args.data_dir, manual_dir=args.manual_dir, force=args.force,
                                   skip_bad=args.skip_bad)
    except (formats.RawFormatError, FileNotFoundError, ValueError) as e:
        print(f"{shown}: FAILED: {e}", file=sys.stderr)
        return 1
    if before.get(shown) and not args.force:
        print(f"{shown}: already prepared in {path} (--force prepares it again)")
    return 0


def prepare_datasets(names: list[str], prepare_all: bool, force: bool, data_dir, manual_dir) -> int:
    if prepare_all == bool(names):
        print("prepare: give dataset names or --all (not both)", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in loading.names()]
    if unknown:
        print(f"prepare: unknown dataset(s) {', '.join(unknown)}; valid names: {', '.join(loading.names())}",
              file=sys.stderr)
        return 2
    failed = False
    for row in loading.status(data_dir=data_dir, manual_dir=manual_dir):
        if row.name not in names and not prepare_all:
            continue
        if row.raw_problem and not (row.prepared and not force):
            print(f"{row.name}: FAILED: {row.raw_problem}", file=sys.stderr)
            failed = True
            continue
        if row.raw is None:
            print(f"{row.name}: skipped, raw files not found; to install: {row.install_hint}")
            failed |= not prepare_all
            continue
        if row.prepared and not force:
            print(f"{row.name}: already prepared in {row.path} ({_sizes(row.split_sizes)})")
            continue
        try:  # loading.prepare logs the "Preparing ..." and "Prepared ..." lines (shown by _PrintLog)
            loading.prepare(row.name, data_dir=data_dir, manual_dir=manual_dir, force=force)
        except (formats.RawFormatError, FileNotFoundError) as e:
            print(f"{row.name}: FAILED: {e}", file=sys.stderr)
            failed = True
    if prepare_all:  # imagenet2012 too, when its tars are there (image folders need --root: not in --all)
        for row in loading.image_status(data_dir=data_dir, manual_dir=manual_dir):
            if row.name != "imagenet2012" or row.prepared or not (row.raw or row.raw_problem):
                continue
            try:
                loading.prepare(row.name, data_dir=data_dir, manual_dir=manual_dir, force=force)
            except (formats.RawFormatError, FileNotFoundError) as e:
                print(f"{row.name}: FAILED: {e}", file=sys.stderr)
                failed = True
    return 1 if failed else 0


def bench_datasets(names: list[str], repeats: int, json_path, manual_dir) -> int:
    """Times prepare (into a fresh temporary data_dir) and load of train and test; median of `repeats`."""
    unknown = [n for n in names if n not in loading.names()]
    if unknown or not names:
        print(f"bench: give dataset names from {', '.join(loading.names())}", file=sys.stderr)
        return 2
    results = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "cpu_count": os.cpu_count(), "repeats": repeats, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="cnnlab_data_bench_") as data_dir:
        for name in names:
            start = time.perf_counter()
            loading.prepare(name, data_dir=data_dir, manual_dir=manual_dir)
            prepare_s = time.perf_counter() - start
            row = {"prepare_s": round(prepare_s, 3)}
            for split in ("train", "test"):
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    ds = loading.load(name, split, data_dir=data_dir)
                    times.append(time.perf_counter() - start)
                row[f"load_{split}_s"] = round(statistics.median(times), 3)
                row[f"{split}_examples"] = len(ds)
            results["datasets"][name] = row
            print(f"{name:14s} prepare {row['prepare_s']:6.2f} s   load train ({row['train_examples']:,}) "
                  f"{row['load_train_s']:5.2f} s   load test ({row['test_examples']:,}) {row['load_test_s']:5.2f} s",
                  flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return 0


class _PrintLog(logging.Handler):
    """Shows cnnlab.data's log in the terminal: INFO ("Preparing ...", "Prepared ...") as plain stdout
    lines, warnings and errors on stderr with their level."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            print(record.getMessage(), flush=True)
        else:
            print(f"{record.levelname} {record.name}: {record.getMessage()}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnlab.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR or "
                                                         "~/tensorflow_datasets)")
    parser.add_argument("--manual_dir", default=None, help="TFDS manual dir with raw files (default: "
                                                           "<data_dir>/downloads/manual)")
    commands = parser.add_subparsers(dest="command")
    prep = commands.add_parser("prepare", help="prepare datasets from their raw files")
    prep.add_argument("names", nargs="*", help=f"datasets: {', '.join(loading.names())}, imagenet2012, "
                                               f"image_folder, {demo.NAME}")
    prep.add_argument("--all", action="store_true", help="every dataset whose raw files are present")
    prep.add_argument("--force", action="store_true", help="prepare again even if already prepared")
    prep.add_argument("--skip_bad", action="store_true", help="imagenet2012 / image_folder: skip files that "
                      "do not decode (counted, listed in the dataset's metadata) instead of stopping")
    prep.add_argument("--name", default=None, help="image_folder: the dataset's name (a-z, 0-9, _)")
    prep.add_argument("--root", default=None, help="image_folder: ROOT/<class name>/<image file>")
    prep.add_argument("--test_root", default=None, help="image_folder: test images, same layout")
    prep.add_argument("--test_fraction", type=float, default=0.2,
                      help="image_folder without --test_root: seeded stratified test fraction (0.2)")
    prep.add_argument("--split_seed", type=int, default=0, help="image_folder: seed of that split (0)")
    prep.add_argument("--data_dir", default=argparse.SUPPRESS)
    prep.add_argument("--manual_dir", default=argparse.SUPPRESS)
    bench = commands.add_parser("bench", help="time prepare (fresh temporary data_dir) and load")
    bench.add_argument("names", nargs="+", help=f"datasets: {', '.join(loading.names())}")
    bench.add_argument("--repeats", type=int, default=3, help="loads per split (median reported)")
    bench.add_argument("--json", default=None, help="also write the figures to this JSON file")
    bench.add_argument("--manual_dir", default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tfds.disable_progress_bar()  # one line per dataset instead of progress bars in install logs
    log = logging.getLogger("cnnlab.data")
    handler, previous = _PrintLog(), (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # shown once, by handler
    try:
        if args.command == "prepare" and args.names and args.names[0] in ("image_folder", "imagenet2012",
                                                                       demo.NAME):
            if len(args.names) > 1 or args.all:
                print(f"prepare {args.names[0]}: prepare it alone (no other names, no --all)", file=sys.stderr)
                return 2
            return prepare_image_datasets(args)
        if args.command == "prepare":
            return prepare_datasets(args.names, args.all, args.force, args.data_dir, args.manual_dir)
        if args.command == "bench":
            return bench_datasets(args.names, args.repeats, args.json, args.manual_dir)
        return list_datasets(args.data_dir, args.manual_dir)
    finally:
        log.removeHandler(handler)
        log.level, log.propagate = previous


if __name__ == "__main__":
    sys.exit(main())
