"""N seeds of LeNet-5 on MNIST: stacked in one vmapped program (cnnlab.train.stacked) vs N sequential runs.

    python -m experiments.bench.seeds [--seeds=5] [--steps=200] [--rounds=3] [--threads=2] [--config=...]

Both sides run the real training programs on the real data path of ``experiments/configs/lenet5_mnist.py``
(batch 128): sequential = for each seed, the single run's jitted step (``steps.make_train_fn``, as
``loop.train`` builds it) fed by that seed's ``feed.train_batches``; stacked = ``stacked.setup``'s vmapped step
fed by all seeds' batches at once. Host batch cutting and host->device transfer are inside the timing on both
sides (as in training); compilation, evaluation and checkpoints are not. Each side runs ``--steps`` steps per
seed, sides interleaved, ``--rounds`` times; the best round of each is reported (the machine may be shared: the
best round is the least disturbed one), with the median and the load average.

Output: ``--out`` (default experiments/bench/results/seeds_<backend>.json) naming the CPU, its vector flags and
the backend; the ratio is sequential time / stacked time (> 1: stacking is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _pin(threads: int) -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def _runners(config, seeds: list[int], steps: int, strategy: str | None):
    """(sequential, stacked): closures that each train ``steps`` steps of every seed and block."""
    import jax
    import numpy as np

    from cnnlab import parallel
    from cnnlab.jobs import seeds as seeds_lib
    from cnnlab.train import loop, stacked
    from cnnlab.train import steps as steps_lib

    singles = []
    for seed in seeds:
        run = loop.setup(seeds_lib.seed_config(config, seed))
        replicated = parallel.replicated(run.mesh)
        train_fn = steps_lib.make_train_fn(
            run.shardings, replicated, model=run.model, tx=run.tx, num_classes=run.info.num_classes,
            mean=tuple(run.info.mean), std=tuple(run.info.std),
            augment=bool(config.augment) and run.feed.device_augment, flip=bool(config.get("augment_flip", True)),
            pad=int(config.get("augment_pad", 4)), label_smoothing=float(config.get("label_smoothing", 0.0)),
            image_size=run.image_shape[:2])
        singles.append({"run": run, "fn": train_fn, "state": run.state,
                        "metrics": jax.device_put(steps_lib.TrainMetrics.zeros(), replicated)})
    srun = stacked.setup(config, seeds, strategy)
    both = {"state": srun.run.state,
            "metrics": jax.device_put(jax.tree.map(lambda x: np.broadcast_to(x, (len(seeds), *x.shape)),
                                                   jax.device_get(steps_lib.TrainMetrics.zeros())),
                                      parallel.replicated(srun.run.mesh))}

    def sequential() -> int:
        for single in singles:
            batches = single["run"].feed.train_batches(0)
            for _ in range(steps):
                batch = next(batches)
                device = parallel.put_host_batch({k: v[None] for k, v in batch.items()}, single["run"].mesh,
                                                 leading_unsharded_axes=1)
                single["state"], single["metrics"] = single["fn"](single["state"], device, single["metrics"])
            jax.block_until_ready(single["state"])
        return steps * len(seeds)

    def together() -> int:
        iterators = [feed.train_batches(0) for feed in srun.feeds]
        for _ in range(steps):
            per_seed = [next(it) for it in iterators]
            device = parallel.put_host_batch({k: np.stack([b[k] for b in per_seed]) for k in per_seed[0]},
                                             srun.run.mesh, leading_unsharded_axes=1)
            both["state"], both["metrics"] = srun.train_fn(both["state"], device, both["metrics"])
        jax.block_until_ready(both["state"])
        return steps * len(seeds)

    return sequential, together, [srun.strategy]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="training steps per seed and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (the process is pinned to them)")
    parser.add_argument("--config", default="experiments/configs/lenet5_mnist.py")
    parser.add_argument("--strategy", default=None, choices=("vmap", "unrolled", "interleaved"),
                        help="how the stacked program runs the seeds (default: stacked.default_strategy())")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.seeds < 2 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1 and --seeds >= 2.")
    cpus = _pin(args.threads)

    import jax

    from cnnlab.jobs import workdir as workdir_lib
    from experiments.config_loading import load_config

    config = load_config(args.config, [f"--config.seeds={args.seeds}", "--config.seeds_stacked=true",
                                       "--config.num_devices=1"])
    seeds = [int(config.seed) + i for i in range(args.seeds)]
    sequential, together, strategy_used = _runners(config, seeds, args.steps, args.strategy)
    variants = {"sequential": sequential, "stacked": together}
    for run in variants.values():  # compile and warm up
        run()
    images = args.steps * args.seeds * int(config.batch_size)
    seconds = {name: [] for name in variants}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, run in variants.items():
            began = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - began)
    best = {name: min(values) for name, values in seconds.items()}
    machine = workdir_lib.machine_info()
    results = {
        "what": f"{args.seeds} seeds x {args.steps} steps of {config.model} on {config.dataset}, batch "
                f"{config.batch_size}: {args.seeds} sequential runs vs one stacked (vmapped) program",
        "machine": workdir_lib.describe_machine(machine), "cpu_model": machine["cpu_model"],
        "cpu_flags": machine["cpu_flags"], "backend": jax.default_backend(), "threads": args.threads, "cpus": cpus,
        "jax": jax.__version__, "strategy": strategy_used[0], "seeds": seeds, "steps_per_seed": args.steps,
        "rounds": args.rounds,
        "seconds_best": best, "seconds_median": {n: statistics.median(v) for n, v in seconds.items()},
        "seconds_all": seconds, "images_per_s_best": {n: images / s for n, s in best.items()},
        "ratio_sequential_over_stacked_best": best["sequential"] / best["stacked"],
        "ratio_sequential_over_stacked_median": (statistics.median(seconds["sequential"])
                                                 / statistics.median(seconds["stacked"])),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"seeds_{jax.default_backend()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    for name in variants:
        print(f"{name:10s} best {best[name]:7.2f} s  ({results['images_per_s_best'][name]:9,.0f} img/s)  median "
              f"{results['seconds_median'][name]:7.2f} s")
    print(f"sequential / stacked: {results['ratio_sequential_over_stacked_best']:.2f} (best), "
          f"{results['ratio_sequential_over_stacked_median']:.2f} (median) on {results['machine']}")
    print(f"Wrote {out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
