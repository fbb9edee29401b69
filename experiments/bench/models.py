r"""Benchmark: forward+backward throughput and FLOPs of every cnnlab model, on whatever device JAX has.

    python -m experiments.bench.models --out=/tmp/models_bench.json
    python -m experiments.bench.models --models=resnet20,resnet50 --imagenet_batch=4 --out=/tmp/mb.json

For each model it jits one training-mode step without the optimizer update (forward with batch statistics and
dropout, softmax cross-entropy loss, gradients with respect to all parameters, new batch-norm statistics),
compiles it (compile time reported separately), runs it once to warm up, then times it for at least
--min_time seconds (and at least --min_steps steps); images/s uses the fastest step (best-of, the least
disturbed on a shared machine; the median is in the JSON too). Input sizes: the small-image models (lenet5 28x28x1, the
CIFAR models 32x32x3) at --batch images; the ImageNet models at --imagenet_size (224) with --imagenet_batch
(2) images. FLOPs per image come from XLA's cost analysis of the compiled programs
(``jax.jit(f).lower(...).compile().cost_analysis()["flops"]``), for the forward pass alone (evaluation mode)
and for the forward+backward step; achieved GFLOP/s = step FLOPs / step time. XLA counts a multiply-add as
2 FLOPs (torchvision's "GFLOPS" column counts multiply-adds, so XLA's forward figure is about twice it).
Peer (--torch_peer=1, CPU float32 only): the same step in PyTorch eager (NCHW; the better of 1 thread and its
default intra-op thread count) for
the models cnnlab has a hand-written PyTorch reference of (lenet5 and the CIFAR ResNets, parameter counts
checked equal), timed the same way in the same process; the table gives cnnlab / PyTorch images/s (> 1: cnnlab
is faster).

Writes the JSON to --out and a markdown table next to it (same name, .md), and prints the table. Runs unchanged
on GPU/TPU (the device is reported in the output). Nothing is downloaded; inputs are random.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnlab import models


def _flops(compiled: Any) -> float | None:
    """FLOPs of a compiled program from XLA's cost analysis (None if the backend does not report them)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device program
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def input_shape(name: str, *, batch: int, imagenet_batch: int, imagenet_size: int) -> tuple[int, int, int, int]:
    """The benchmark input for a model: [batch, H, W, C]."""
    if name == "lenet5":
        return (batch, 28, 28, 1)
    if name in models.SMALL_IMAGE_MODELS:
        return (batch, 32, 32, 3)
    return (imagenet_batch, imagenet_size, imagenet_size, 3)


def bench_model(name: str, shape: tuple[int, ...], *, num_classes: int, dtype: Any, min_time: float,
                min_steps: int, seed: int = 0) -> dict[str, Any]:
    """Compile and time one model's training-mode forward+backward step; FLOPs from XLA's cost analysis."""
    model = models.get(name, num_classes=num_classes, dtype=dtype)
    key_init, key_x, key_y, key_drop = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.normal(key_x, shape, jnp.float32)
    labels = jax.random.randint(key_y, (shape[0],), 0, num_classes)
    variables = jax.jit(functools.partial(model.init, train=False))(key_init, x)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    num_params = models.count_params(params)

    def loss_fn(params, batch_stats, x, labels, dropout_key):
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": dropout_key})
        logits = out[0] if isinstance(out, tuple) else out
        log_probs = jax.nn.log_softmax(logits)
        loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))
        return loss, updates.get("batch_stats", {})

    @jax.jit
    def train_step(params, batch_stats, x, labels, dropout_key):
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, x, labels,
                                                                             dropout_key)
        return loss, grads, new_stats

    @jax.jit
    def forward(params, batch_stats, x):
        return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

    start = time.perf_counter()
    step = train_step.lower(params, batch_stats, x, labels, key_drop).compile()
    compile_s = time.perf_counter() - start
    forward_compiled = forward.lower(params, batch_stats, x).compile()
    step_flops = _flops(step)
    forward_flops = _flops(forward_compiled)

    jax.block_until_ready(step(params, batch_stats, x, labels, key_drop))  # warm-up
    times = []
    total_start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - total_start < min_time:
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, batch_stats, x, labels, key_drop))
        times.append(time.perf_counter() - t0)
    # Best-of: on a machine shared with other jobs the fastest step is the least disturbed one.
    step_s = float(np.min(times))
    batch = shape[0]
    return {
        "model": name,
        "input_shape": list(shape),
        "num_params": num_params,
        "dtype": jnp.dtype(dtype).name,
        "compile_s": round(compile_s, 3),
        "steps_timed": len(times),
        "step_s_median": float(np.median(times)),
        "step_s_min": step_s,
        "images_per_s": batch / step_s,
        "forward_gflops_per_image": None if forward_flops is None else forward_flops / batch / 1e9,
        "train_step_gflops_per_image": None if step_flops is None else step_flops / batch / 1e9,
        "achieved_gflops_per_s": None if step_flops is None else step_flops / step_s / 1e9,
    }


def _torch_reference(name: str, num_classes: int, in_channels: int):
    """The same architecture written in PyTorch (peer), for lenet5 and the CIFAR ResNets; None otherwise."""
    from torch import nn as tnn
    import torch.nn.functional as F

    if name == "lenet5":
        return tnn.Sequential(
            tnn.ZeroPad2d(2), tnn.Conv2d(in_channels, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, num_classes))
    depth_blocks = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
    if name not in depth_blocks:
        return None

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            shortcut = x
            if self.stride != 1 or self.pad:
                shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2,
                                                                            self.pad - self.pad // 2))
            return F.relu(y + shortcut)

    layers = [tnn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()]
    cin = 16
    for i, width in enumerate((16, 32, 64)):
        for j in range(depth_blocks[name]):
            layers.append(Block(cin, width, 2 if i > 0 and j == 0 else 1))
            cin = width
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, num_classes)]
    return tnn.Sequential(*layers)


def bench_torch(name: str, shape: tuple[int, ...], *, num_classes: int, num_params: int, min_time: float,
                min_steps: int) -> dict[str, Any] | None:
    """PyTorch (eager, CPU, float32, NCHW) forward+backward step of the same architecture, if we have one."""
    try:
        import torch
    except ImportError:
        return None
    model = _torch_reference(name, num_classes, shape[-1])
    if model is None:
        return None
    torch_params = sum(p.numel() for p in model.parameters())
    if torch_params != num_params:
        raise AssertionError(f"torch reference for {name} has {torch_params} parameters, cnnlab {num_params}")
    model.train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((shape[0], shape[3], shape[1], shape[2]), generator=generator)
    labels = torch.randint(0, num_classes, (shape[0],), generator=generator)

    def step():
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()

    # PyTorch's OpenMP threads slow down badly when the cores are shared with other jobs (a 2-thread step was
    # measured 20x slower than a 1-thread one on a loaded 2-core machine), so time it with 1 thread and with its
    # default thread count, and keep the better.
    default_threads = torch.get_num_threads()
    best: dict[str, Any] | None = None
    try:
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            step()  # warm-up
            times = []
            total_start = time.perf_counter()
            while len(times) < min_steps or time.perf_counter() - total_start < min_time:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            step_s = float(np.min(times))
            if best is None or step_s < best["torch_step_s_min"]:
                best = {"torch_version": torch.__version__, "torch_threads": threads,
                        "torch_step_s_median": float(np.median(times)), "torch_step_s_min": step_s,
                        "torch_images_per_s": shape[0] / step_s}
    finally:
        torch.set_num_threads(default_threads)
    return best


def device_description() -> str:
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    if device.platform == "cpu":
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        return f"cpu: {cpu}, {os.cpu_count()} logical CPUs visible"
    return f"{device.platform}: {kind}"


def _rate(v: float | None) -> str:
    """Three significant figures without exponents (6211, 35.2, 0.218)."""
    if v is None:
        return "n/a"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def markdown_table(results: list[dict[str, Any]], header: str) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    lines = [header, "",
             "| model | input (batch, H, W, C) | params | fwd GFLOP/img | fwd+bwd GFLOP/img | images/s (fwd+bwd) "
             "| achieved GFLOP/s | compile s | PyTorch images/s (threads) | cnnlab / PyTorch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        torch_ips = r.get("torch_images_per_s")
        ratio = None if torch_ips is None else r["images_per_s"] / torch_ips
        lines.append(
            f"| {r['model']} | {tuple(r['input_shape'])} | {r['num_params']:,} | "
            f"{fmt(r['forward_gflops_per_image'], '.3f')} | {fmt(r['train_step_gflops_per_image'], '.3f')} | "
            f"{_rate(r['images_per_s'])} | {fmt(r['achieved_gflops_per_s'], '.1f')} | {r['compile_s']:.1f} | "
            f"{_rate(torch_ips)}{'' if torch_ips is None else ' (%d)' % r['torch_threads']} | "
            f"{fmt(ratio, '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", help="comma-separated names, 'all', 'small' or 'imagenet'")
    parser.add_argument("--batch", type=int, default=16, help="batch for the small-image models")
    parser.add_argument("--imagenet_batch", type=int, default=2, help="batch for the ImageNet models")
    parser.add_argument("--imagenet_size", type=int, default=224, help="input side for the ImageNet models")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classes (default: 10 for small-image models, 1000 for ImageNet models)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--min_time", type=float, default=2.0, help="seconds to time each model for (at least)")
    parser.add_argument("--min_steps", type=int, default=3, help="timed steps per model (at least)")
    parser.add_argument("--torch_peer", type=int, default=1,
                        help="1: also time the same step in PyTorch where cnnlab has a reference (lenet5, CIFAR "
                             "ResNets) and report the ratio; 0: skip")
    parser.add_argument("--out", required=True, help="JSON output path; the markdown table goes next to it (.md)")
    args = parser.parse_args(argv)

    if args.models == "all":
        names = models.names()
    elif args.models == "small":
        names = [n for n in models.names() if n in models.SMALL_IMAGE_MODELS]
    elif args.models == "imagenet":
        names = [n for n in models.names() if n not in models.SMALL_IMAGE_MODELS]
    else:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        for n in names:
            models.get(n, num_classes=1)  # unknown names fail here, listing the known ones
    for flag in ("batch", "imagenet_batch", "min_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32

    results: list[dict[str, Any]] = []
    wall = time.perf_counter()
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    md_path = os.path.splitext(out)[0] + ".md"

    def write(complete: bool) -> tuple[dict[str, Any], str]:
        """Write the JSON and the table (after every model, so a long run that is stopped keeps its results)."""
        report = {
            "benchmark": "cnnlab.models forward+backward (training-mode step, no optimizer update)",
            "device": device_description(),
            "backend": jax.default_backend(),
            "jax_version": jax.__version__,
            "dtype": args.dtype,
            "flags": vars(args),
            "complete": complete,
            "total_wall_s": round(time.perf_counter() - wall, 1),
            "results": results,
        }
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
        table = markdown_table(results, f"Forward+backward throughput on {report['device']} ({args.dtype}, "
                                        f"jax {jax.__version__}), best-of step time")
        with open(md_path, "w") as f:
            f.write(table)
        return report, table

    for name in names:
        shape = input_shape(name, batch=args.batch, imagenet_batch=args.imagenet_batch,
                            imagenet_size=args.imagenet_size)
        if shape[1] < models.min_input_size(name):
            print(f"skip {name}: {shape[1]}x{shape[2]} is below its minimum {models.min_input_size(name)}")
            continue
        classes = args.num_classes or (10 if name in models.SMALL_IMAGE_MODELS else 1000)
        result = bench_model(name, shape, num_classes=classes, dtype=dtype, min_time=args.min_time,
                             min_steps=args.min_steps)
        if args.torch_peer and jax.default_backend() == "cpu" and dtype == jnp.float32:
            result.update(bench_torch(name, shape, num_classes=classes, num_params=result["num_params"],
                                      min_time=args.min_time, min_steps=args.min_steps) or {})
        results.append(result)
        peer = (f"  PyTorch {result['torch_images_per_s']:.1f} img/s" if "torch_images_per_s" in result else "")
        print(f"{name:20s} {str(tuple(shape)):20s} {result['images_per_s']:10.1f} img/s  "
              f"compile {result['compile_s']:.1f}s{peer}", flush=True)
        write(complete=False)

    report, table = write(complete=True)
    print(table)
    print(f"wrote {out} and {md_path}")
    return report


if __name__ == "__main__":
    main()
