"""Training throughput on CPU: cnnlab (JAX/Flax, the real training step) vs PyTorch eager, same run, same cores.

    python -m experiments.bench.train [--threads=2] [--models=lenet5,resnet20,resnet56,densenet_bc_100_12]
        [--rounds=5] [--conv_impls=xla,onednn]

The CIFAR ResNets and DenseNet-BC are timed once per ``--conv_impls`` value: ``xla`` (``lax`` convolutions) and
``onednn`` (``cnnlab.native``'s oneDNN convolutions, the default on one CPU device; skipped with the reason when
the library is not built). The JSON records which oneDNN kernels ran (``native_conv.implementations``) and
whether ``cnnlab.native.memory.keep_freed_memory`` was in force; it is applied before JAX starts, so PyTorch,
in the same process, runs under the same malloc settings. ``CNNLAB_KEEP_FREED_MEMORY=0`` turns it off.

To measure an AVX2-only CPU's code paths on an AVX-512 machine, set before starting:
``XLA_FLAGS=--xla_cpu_max_isa=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (PyTorch's convolutions
run in oneDNN, which ignores ``ATEN_CPU_CAPABILITY`` and reads ``ONEDNN_MAX_CPU_ISA``). The JSON records these
variables, the CPU's SIMD flags, the ISA oneDNN reports, ATen's capability, and a probe of whether XLA's matrix
products (YNNPACK, which picks its kernels at run time) slow down under the limit, so a figure says what it
measured; see ``isa_report``.

For each model both frameworks train the same architecture (LeNet-5 with ReLU/max-pool on 28x28 inputs padded to
32x32; the CIFAR ResNet-20/56 with option-A shortcuts and DenseNet-BC-100 (k=12) on 32x32x3) with the same global batch (128), optimizer (SGD,
momentum 0.9, lr 0.01), float32 and thread count (the process is pinned to the first ``threads`` CPUs; torch uses
``torch.set_num_threads(threads)``, XLA sizes its pool from the pinned CPUs).

The cnnlab side times what ``train_and_evaluate`` runs: ``steps.make_train_fn`` (jit, donated state) fed uint8
batches from the host (one host->device transfer per dispatch, normalisation on device), ``steps_per_dispatch``
steps per jitted call (``lax.scan``); reported for 1 and 10 steps per dispatch. The PyTorch side gets its
batches already as normalised float32 tensors (its best case: no conversion in the timed loop) and runs
``zero_grad / forward / cross_entropy / backward / step`` eagerly.

Variants run interleaved, ``--rounds`` times each; the best round of each is reported (the machine may be shared:
the best round is the least disturbed one) along with the median. Output: JSON and a markdown table in
``--out_dir`` (default experiments/bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


# Steps per timed round (one round is a few seconds), and the models also timed at 10 steps per dispatch.
STEPS = {"lenet5": 20, "resnet20": 3, "resnet56": 2, "densenet_bc_100_12": 1}
TEN_STEP_MODELS = ("lenet5", "resnet20")


def _pin(threads: int) -> list[int]:
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def jax_runner(model_name: str, *, batch: int, steps_per_dispatch: int, steps: int, conv_impl: str = "xla"):
    """A closure that trains ``steps`` steps of cnnlab's train step and blocks; returns (run, description)."""
    import jax
    import numpy as np
    import optax

    from cnnlab import models, parallel
    from cnnlab.train import state as state_lib
    from cnnlab.train import steps as steps_lib

    shape = (28, 28, 1) if model_name == "lenet5" else (32, 32, 3)
    mesh = parallel.make_data_mesh(jax.devices()[:1])
    model = models.get(model_name, num_classes=10, **({} if model_name == "lenet5" else {"conv_impl": conv_impl}))
    tx = optax.sgd(0.01, momentum=0.9)
    state, shardings = state_lib.create_train_state(model, tx, seed=0, input_shape=shape, mesh=mesh)
    replicated = parallel.replicated(mesh)
    train_fn = steps_lib.make_train_fn(shardings, replicated, model=model, tx=tx, num_classes=10,
                                       mean=(0.5,) * shape[-1], std=(0.25,) * shape[-1], augment=False, flip=False,
                                       label_smoothing=0.0)
    rng = np.random.default_rng(0)
    host = {"image": rng.integers(0, 256, (steps_per_dispatch, batch, *shape), dtype=np.uint8),
            "label": rng.integers(0, 10, (steps_per_dispatch, batch)).astype(np.int32),
            "mask": np.ones((steps_per_dispatch, batch), bool)}
    box = {"state": state, "metrics": jax.device_put(steps_lib.TrainMetrics.zeros(), replicated)}

    def run():
        for _ in range(max(steps // steps_per_dispatch, 1)):
            device_batch = parallel.put_host_batch(host, mesh, leading_unsharded_axes=1)
            box["state"], box["metrics"] = train_fn(box["state"], device_batch, box["metrics"])
        jax.block_until_ready(box["state"])
        return max(steps // steps_per_dispatch, 1) * steps_per_dispatch

    return run


def torch_runner(model_name: str, *, batch: int, steps: int):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class LeNet5(nn.Module):
        """cnnlab's lenet5 (style "modern"): pad 28->32, conv5x5(6)-relu-maxpool, conv5x5(16)-relu-maxpool, 120-84-10."""

        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.f5, self.f6, self.out = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = F.pad(x, (2, 2, 2, 2))
            x = F.max_pool2d(F.relu(self.c1(x)), 2)
            x = F.max_pool2d(F.relu(self.c2(x)), 2)
            x = F.relu(self.f5(x.flatten(1)))
            return self.out(F.relu(self.f6(x)))

    class Block(nn.Module):
        """He et al. CIFAR basic block, option-A shortcut (subsample + zero-pad channels), as cnnlab's resnet20."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            r = x[:, :, ::2, ::2] if self.stride == 2 else x
            if self.extra:
                r = F.pad(r, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
            return F.relu(y + r)

    class CifarResNet(nn.Module):
        def __init__(self, blocks_per_stage):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            layers, cin = [], 16
            for i, width in enumerate((16, 32, 64)):
                for j in range(blocks_per_stage):
                    layers.append(Block(cin, width, 2 if (i > 0 and j == 0) else 1))
                    cin = width
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.layers(F.relu(self.bn(self.stem(x))))
            return self.fc(x.mean((2, 3)))

    class DenseLayer(nn.Module):
        """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), as cnnlab's densenet DenseLayer; returns the new features."""

        def __init__(self, cin, growth):
            super().__init__()
            self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
            self.norm2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

        def forward(self, x):
            y = self.conv1(F.relu(self.norm1(x)))
            return torch.cat([x, self.conv2(F.relu(self.norm2(y)))], 1)

    class DenseNetBC(nn.Module):
        """cnnlab's densenet_bc_100_12: 3x3 stem (24), 3 blocks of 16 layers (k=12), compression 0.5."""

        def __init__(self, growth=12, layers_per_block=16):
            super().__init__()
            cin, parts = 2 * growth, [nn.Conv2d(3, 2 * growth, 3, 1, 1, bias=False)]
            for i in range(3):
                for _ in range(layers_per_block):
                    parts.append(DenseLayer(cin, growth))
                    cin += growth
                if i < 2:
                    parts += [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cin // 2, 1, bias=False), nn.AvgPool2d(2)]
                    cin //= 2
            self.features = nn.Sequential(*parts, nn.BatchNorm2d(cin), nn.ReLU())
            self.fc = nn.Linear(cin, 10)

        def forward(self, x):
            return self.fc(self.features(x).mean((2, 3)))

    torch.manual_seed(0)
    constructors = {"lenet5": LeNet5, "resnet20": lambda: CifarResNet(3), "resnet56": lambda: CifarResNet(9),
                    "densenet_bc_100_12": DenseNetBC}
    if model_name not in constructors:
        raise SystemExit(f"bench.train: no PyTorch twin for {model_name!r}; choose from {sorted(constructors)}")
    model = constructors[model_name]()
    model.train()
    shape = (1, 28, 28) if model_name == "lenet5" else (3, 32, 32)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return steps

    return run, sum(p.numel() for p in model.parameters())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--conv_impls", default="xla,onednn",
                        help="comma-separated conv_impl values to time for the CIFAR ResNets and DenseNet-BC (xla, "
                             "onednn, winograd [ResNets only]); onednn is skipped, with the reason, where "
                             "cnnlab.native is not built")
    parser.add_argument("--tag", default="", help="suffix of the output file names, e.g. avx2")
    parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)

    cpus = _pin(args.threads)
    from cnnlab.native import memory

    # Both frameworks run in this process, so both get the same malloc settings (cnnlab.native.memory).
    kept = memory.keep_freed_memory()
    import jax
    import torch

    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "cpus": cpus, "batch": args.batch, "rounds": args.rounds,
               "jax": jax.__version__, "torch": torch.__version__, "platform": platform.platform(),
               "cpu": _cpu_name(), "isa": isa_report(), "load_average_before": os.getloadavg(), "models": {}}
    from cnnlab.native import conv as native_conv

    conv_impls = [c for c in args.conv_impls.split(",") if c]
    if "onednn" in conv_impls and not native_conv.available():
        print(f"bench.train: conv_impl=onednn skipped: {native_conv.why_unavailable()}", flush=True)
        conv_impls.remove("onednn")
    results["keep_freed_memory"] = kept
    results["native_conv"] = {"available": native_conv.available(), "why_not": native_conv.why_unavailable()}
    for model_name in args.models.split(","):
        steps = STEPS.get(model_name, 2)
        variants = {}
        for conv_impl in (["xla"] if model_name == "lenet5" else conv_impls):
            label = "cnnlab" if model_name == "lenet5" else f"cnnlab conv_impl={conv_impl}"
            variants[f"{label} (1 step/dispatch)"] = jax_runner(
                model_name, batch=args.batch, steps_per_dispatch=1, steps=steps, conv_impl=conv_impl)
            if model_name in TEN_STEP_MODELS:
                variants[f"{label} (10 steps/dispatch)"] = jax_runner(
                    model_name, batch=args.batch, steps_per_dispatch=10, steps=max(steps, 10), conv_impl=conv_impl)
        torch_run, torch_params = torch_runner(model_name, batch=args.batch, steps=steps)
        variants["pytorch eager"] = torch_run
        for run in variants.values():  # compile / warm up
            run()
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                start = time.perf_counter()
                done = run()
                times[name].append(done * args.batch / (time.perf_counter() - start))
        best = {name: max(v) for name, v in times.items()}
        entry = {"images_per_s_best": best, "images_per_s_median": {n: statistics.median(v) for n, v in times.items()},
                 "images_per_s_all": times, "torch_params": torch_params,
                 "ratio_best_vs_pytorch": {n: best[n] / best["pytorch eager"] for n in best}}
        results["models"][model_name] = entry
        for name in variants:
            print(f"{model_name:9s} {name:28s} best {best[name]:9,.0f} img/s  median "
                  f"{entry['images_per_s_median'][name]:9,.0f}  ratio {entry['ratio_best_vs_pytorch'][name]:.2f}",
                  flush=True)
    results["native_conv"]["implementations"] = native_conv.implementations()
    results["load_average_after"] = os.getloadavg()
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"train_cpu_{args.threads}threads{'_' + args.tag if args.tag else ''}")
    with open(stem + ".json", "w") as f:
        json.dump(results, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(results))
    print(f"Wrote {stem}.json and {stem}.md")
    return results


def markdown_table(results: dict) -> str:
    isa = results.get("isa", {})
    lines = [f"Training images/s on {results['threads']} CPU thread(s) ({results['cpu']}; SIMD flags "
             f"{', '.join(isa.get('cpu_simd_flags', [])) or 'unknown'}), batch {results['batch']}, "
             f"best of {results['rounds']} interleaved rounds; load average before/after "
             f"{results['load_average_before'][0]:.1f}/{results['load_average_after'][0]:.1f}.",
             f"XLA_FLAGS={isa.get('XLA_FLAGS')!r}, ATEN_CPU_CAPABILITY={isa.get('ATEN_CPU_CAPABILITY')!r}, "
             f"ONEDNN_MAX_CPU_ISA={isa.get('ONEDNN_MAX_CPU_ISA')!r}; ATen capability {isa.get('aten_capability')}, "
             f"oneDNN ISA {isa.get('onednn_isa')!r}; XLA matmul probe {isa.get('xla_matmul_probe')}.", "",
             "| model | implementation | images/s (best) | images/s (median) | ratio vs PyTorch |",
             "|---|---|---:|---:|---:|"]
    for model, entry in results["models"].items():
        for name, value in entry["images_per_s_best"].items():
            lines.append(f"| {model} | {name} | {value:,.0f} | {entry['images_per_s_median'][name]:,.0f} | "
                         f"{entry['ratio_best_vs_pytorch'][name]:.2f} |")
    return "\n".join(lines) + "\n"


_SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_fp16", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")


def isa_report() -> dict:
    """What instruction sets each library was allowed and (where it says) really used in this process.

    * the CPU's SIMD flags (/proc/cpuinfo) and the environment variables that limit them;
    * ``aten_capability``: ``torch.backends.cpu.get_cpu_capability()`` (ATen's vectorised kernels);
    * ``onednn_isa``: the ISA line oneDNN prints for a small convolution, read in a subprocess with
      ``ONEDNN_VERBOSE=1`` and this environment (PyTorch's CPU convolutions run in oneDNN);
    * ``xla_matmul_probe``: seconds (CPU time, best of 5) of a 1024^3 float32 matrix product under XLA in
      this process and in a subprocess without ``--xla_cpu_max_isa``; about equal times under an AVX2 limit mean
      XLA's matrix-product library (YNNPACK, dispatching on the CPU it finds) did not honour the limit, while
      XLA's own generated loops do.
    """
    import subprocess

    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    report = {"cpu_simd_flags": [f for f in _SIMD_FLAGS if f in flags],
              "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
              "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
              "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    import torch

    report["aten_capability"] = torch.backends.cpu.get_cpu_capability()
    onednn_probe = ("import torch, torch.nn.functional as F; "
                    "F.conv2d(torch.randn(2, 16, 8, 8), torch.randn(16, 16, 3, 3), padding=1)")
    try:
        out = subprocess.run([sys.executable, "-c", onednn_probe], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                             capture_output=True, text=True, timeout=120).stdout
        isa_lines = [line.split("isa:", 1)[1].strip() for line in out.splitlines() if "isa:" in line]
        kernels = sorted({part for line in out.splitlines() if ",convolution," in line
                          for part in line.split(",") if part.startswith("jit:") or part.startswith("brg")})
        report["onednn_isa"] = isa_lines[0] if isa_lines else None
        report["onednn_conv_kernels"] = kernels
    except (OSError, subprocess.SubprocessError) as e:
        report["onednn_isa"] = f"probe failed: {e}"
    matmul_probe = ("import time, jax, jax.numpy as jnp\n"
                    "a = jnp.ones((1024, 1024)); f = jax.jit(lambda a: a @ a); f(a).block_until_ready()\n"
                    "best = 1e9\n"
                    "for _ in range(5):\n"
                    "    t = time.process_time(); f(a).block_until_ready(); best = min(best, time.process_time() - t)\n"
                    "print(best)\n")
    probe = {}
    for label, xla_flags in (("this_process_flags", report["XLA_FLAGS"]),
                             ("without_max_isa", " ".join(f for f in report["XLA_FLAGS"].split()
                                                          if not f.startswith("--xla_cpu_max_isa")))):
        try:
            out = subprocess.run([sys.executable, "-c", matmul_probe], capture_output=True, text=True, timeout=300,
                                 env={**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}).stdout
            probe[label] = float(out.split()[-1])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
            probe[label] = f"probe failed: {e}"
    report["xla_matmul_probe"] = probe
    return report


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
