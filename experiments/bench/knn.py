r"""Benchmark: exact kNN on real Fashion-MNIST, cnnlab against its peers, in one process.

    python -m experiments.bench.knn --queries=2000 --out_dir=/tmp/knn_bench

Training set: all 60,000 Fashion-MNIST training images (784 uint8 pixels); queries: the first --queries test
images; k = --k (default 10), majority vote with scikit-learn's tie rule (smallest label). For L1 and L2 it
times, one after another in this process:
  cnnlab         cnnlab.knn.predict (exact; compiled first, compile time reported separately)
  scikit-learn   KNeighborsClassifier(algorithm="brute") on the uint8 arrays (float64 inside)
  faiss-cpu      IndexFlatL2 / IndexFlat(METRIC_L1) on float32 copies, + the same vote
  numpy          no-loop L2 (|q|^2 - 2 q.x + |x|^2 in float32 with one matrix product, argpartition), L2 only
XLA_FLAGS gets --xla_flags (default: 512-bit vectors for XLA:CPU) before JAX starts.

--isa=avx2 emulates an AVX2-only CPU (e.g. an AMD EPYC without AVX-512) on an AVX-512 machine, for every library
in the run, and checks that each one took it (all recorded in the JSON under "isa"):
  XLA:CPU code generation  --xla_cpu_max_isa=AVX2 (checked: widest vector in the LLVM IR of a probe kernel)
  YNNPACK (XLA's matrix products)  ignores that flag and picks AMX/AVX-512 kernels from CPUID; its cached
                           feature mask (ynn::get_supported_arch_flags) is overwritten with SSE2..AVX2+FMA3 once
                           libjax_common.so is loaded (symbols found with `nm`; checked by reading it back)
  faiss                    FAISS_SIMD_LEVEL=AVX2 (read by the dynamic-dispatch wheels, checked with
                           faiss.SIMDConfig.get_level_name()); FAISS_OPT_LEVEL=AVX2 too (older per-ISA wheels)
  OpenBLAS (faiss's L2)    OPENBLAS_CORETYPE=Haswell (checked with openblas_get_corename())
  cnnlab                   takes the AVX2 kernels (uint8 L1 tile) because --xla_cpu_max_isa is below AVX-512
It is an emulation on the same cores, caches and clock, not a measurement of another CPU.

The methods run round robin
(so a shared machine's changing load hits all alike), each 2 to --repeats times (not repeated beyond 2 once it used
--budget_s seconds). It reports seconds (best run), queries per second, accuracy, whether the predictions equal
scikit-learn's, the peak resident memory the method added, and every peer's time divided by cnnlab's (> 1:
cnnlab is faster); the JSON also keeps every run's wall and process-CPU seconds (seconds_all_runs,
cpu_seconds_all_runs: CPU time is less sensitive to other jobs on a shared machine), the load average before
and after, the CPU model, usable cores and vector flags, and the ISA each library ran (see --isa). For a
one-core comparison, which OpenMP barriers under load do not distort, run it under `taskset -c 1` (faiss then
uses 1 thread, XLA 1 worker). Writes knn_bench.json and knn_bench.md into --out_dir and prints the table.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time

import numpy as np


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakMemory:
    """Peak resident memory above the starting level while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.start = _rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def added_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _vote_smallest_label(neighbour_labels: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.stack([(neighbour_labels == c).sum(1) for c in range(num_classes)], 1)
    return counts.argmax(1)  # first maximum = smallest tied label (scikit-learn's rule)


def _timed(fn):
    """(wall seconds, CPU seconds of this process (all threads), peak added MiB, result) of one call."""
    with _PeakMemory() as memory:
        cpu_began, began = time.process_time(), time.perf_counter()
        result = fn()
        elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    return elapsed, cpu, memory.added_mib, result


_VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                 "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def _cpu_info() -> dict:
    """Model name, core count and the vector-relevant flags of this CPU (from /proc/cpuinfo)."""
    model, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == platform.processor():
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cores": os.cpu_count(), "cores_usable": usable,  # usable: e.g. under taskset -c 1
            "vector_flags": [f for f in _VECTOR_FLAGS if f in flags]}


_YNN_FLAGS = "_ZZN3ynn24get_supported_arch_flagsEvE5flags"  # static uint64 feature mask
_YNN_GUARD = "_ZGVZN3ynn24get_supported_arch_flagsEvE5flags"  # its initialisation guard
# ynnpack/base/arch.h: sse2, ssse3, sse41, avx, f16c, avx2, fma3 = bits 0..6 (avx512* and amx* are bits 7..14)
_YNN_AVX2_MASK = 0x7F


def _limit_ynnpack_to_avx2() -> dict:
    """Makes YNNPACK (XLA:CPU's matrix-product library, loaded with jaxlib) choose its AVX2+FMA3 kernels, as on
    a CPU without AVX-512, VNNI or AMX: it ignores --xla_cpu_max_isa and reads CPUID once into a static mask,
    which is overwritten here before the first product runs. Returns what was found and written."""
    library = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].endswith("libjax_common.so") and int(fields[2], 16) == 0:
                library, base = fields[5], int(fields[0].split("-")[0], 16)
                break
    if library is None or shutil.which("nm") is None:
        raise SystemExit("--isa=avx2 needs jaxlib's libjax_common.so loaded and binutils' `nm` to find YNNPACK's "
                         "feature mask; without them the matrix products would run AMX/AVX-512 kernels.")
    symbols = {}
    for line in subprocess.run(["nm", library], capture_output=True, text=True, check=True).stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] in (_YNN_FLAGS, _YNN_GUARD):
            symbols[fields[2]] = int(fields[0], 16)
    if len(symbols) != 2:
        raise SystemExit(f"YNNPACK's feature mask was not found in {library} (a different jaxlib build?); "
                         "run without --isa=avx2.")
    mask = ctypes.c_uint64.from_address(base + symbols[_YNN_FLAGS])
    guard = ctypes.c_uint8.from_address(base + symbols[_YNN_GUARD])
    before = hex(mask.value) if guard.value else "not initialised"
    mask.value, guard.value = _YNN_AVX2_MASK, 1
    return {"ynnpack_arch_mask_before": before, "ynnpack_arch_mask": hex(mask.value)}


def _xla_widest_vector_bits(dump_dir: str) -> int:
    """Widest SIMD vector (bits) in the optimised LLVM IR of the probe kernel XLA dumped into dump_dir."""
    sizes = {"half": 16, "float": 32, "i8": 8, "i16": 16, "i32": 32}
    widest = 0
    for path in glob.glob(os.path.join(dump_dir, "*isa_probe*ir-with-opt.ll")):
        with open(path) as f:
            for count, kind in re.findall(r"<(\d+) x (half|float|i8|i16|i32)>", f.read()):
                widest = max(widest, int(count) * sizes[kind])
    return widest


def _xla_probe_instructions(dump_dir: str) -> dict:
    """What the probe kernel's machine code uses (binutils' objdump on XLA's dumped object files): 512-bit zmm
    registers, native float16 arithmetic (vsubph), or float16 emulated through float32 (vcvtph2ps)."""
    objects = glob.glob(os.path.join(dump_dir, "*isa_probe*.o"))
    if not objects or shutil.which("objdump") is None:
        return {}
    text = subprocess.run(["objdump", "-d", *objects], capture_output=True, text=True).stdout
    return {"xla_probe_uses_zmm": "zmm" in text, "xla_probe_native_fp16": "vsubph" in text,
            "xla_probe_fp16_via_fp32": "vcvtph2ps" in text and "vsubph" not in text}


def _openblas_core(faiss_module) -> str:
    """The OpenBLAS kernel family (e.g. "SapphireRapids", "Haswell") faiss's bundled OpenBLAS runs."""
    libs = glob.glob(os.path.join(os.path.dirname(faiss_module.__file__), "..", "faiss_cpu.libs", "libopenblas*"))
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            return lib.openblas_get_corename().decode()
        except (OSError, AttributeError):
            continue
    return "unknown (no bundled OpenBLAS found)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000, help="test images used as queries")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--metrics", default="l2,l1")
    parser.add_argument("--peers", default="sklearn,faiss,numpy", help="comma list of sklearn, faiss, numpy")
    parser.add_argument("--repeats", type=int, default=5, help="most timed runs per method (the best is reported)")
    parser.add_argument("--min_repeats", type=int, default=2, help="fewest timed runs per method")
    parser.add_argument("--budget_s", type=float, default=30.0,
                        help="a method is not repeated beyond --min_repeats once its runs took this long")
    parser.add_argument("--out_dir", default="knn_bench")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--xla_flags", default="--xla_cpu_prefer_vector_width=512",
                        help="added to XLA_FLAGS before JAX starts; the default lets XLA:CPU use 512-bit vectors "
                             "(LLVM otherwise prefers 256-bit ones), about 20%% faster L1 on AVX-512 CPUs")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: emulate an AVX2-only CPU in XLA, YNNPACK, faiss and OpenBLAS (module docstring)")
    parser.add_argument("--openblas_coretype", default=None,
                        help="OPENBLAS_CORETYPE for faiss's bundled OpenBLAS (its L2 matrix products), e.g. SkylakeX: "
                             "faiss-cpu 1.15.1 ships OpenBLAS 0.3.15, which does not know Sapphire Rapids and falls "
                             "back to its SSE3 'Prescott' kernels there (recorded as isa.faiss_openblas_core)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    if args.openblas_coretype:
        os.environ["OPENBLAS_CORETYPE"] = args.openblas_coretype
    probe_dir = tempfile.mkdtemp(prefix="knn_isa_probe_")
    xla_flags = [args.xla_flags, f"--xla_dump_to={probe_dir}", "--xla_dump_hlo_module_re=.*isa_probe.*"]
    if args.isa == "avx2":
        xla_flags = [f for f in xla_flags if "prefer_vector_width" not in f] + ["--xla_cpu_max_isa=AVX2"]
        os.environ.update(FAISS_SIMD_LEVEL="AVX2", FAISS_OPT_LEVEL="AVX2", OPENBLAS_CORETYPE="Haswell")
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", "")] + [f for f in xla_flags if f]).strip()

    import jax
    import jax.numpy as jnp

    from cnnlab import data, knn

    isa = {"requested": args.isa, "xla_flags": os.environ["XLA_FLAGS"]}
    if args.isa == "avx2":
        isa.update(_limit_ynnpack_to_avx2())

    @jax.jit
    def isa_probe(a, b):  # a float16 |a - b| sum: 512-bit vectors where XLA may use AVX-512, else 256-bit
        return jnp.abs(a - b).sum(0)

    isa_probe(jnp.ones((64, 4096), jnp.float16), jnp.ones((64, 4096), jnp.float16)).block_until_ready()
    isa["xla_widest_vector_bits"] = _xla_widest_vector_bits(probe_dir)
    isa.update(_xla_probe_instructions(probe_dir))
    shutil.rmtree(probe_dir, ignore_errors=True)
    isa["cnnlab_l1_tile"] = jnp.dtype(knn.l1_tile_dtype("cpu")).name
    isa["cnnlab_l2_operands"] = jnp.dtype(knn.l2_operand_dtype("cpu")).name
    if "faiss" in args.peers.split(","):
        import faiss

        isa["faiss_simd_level"] = faiss.SIMDConfig.get_level_name() if hasattr(faiss, "SIMDConfig") else "n/a"
        isa["faiss_compile_options"] = faiss.get_compile_options()
        isa["faiss_openblas_core"] = _openblas_core(faiss)
    if args.isa == "avx2" and (isa["xla_widest_vector_bits"] > 256 or isa.get("xla_probe_uses_zmm")
                               or isa.get("xla_probe_native_fp16")):
        raise SystemExit(f"--isa=avx2: XLA still generated AVX-512 code: {isa}")
    print("ISA settings:", json.dumps(isa), flush=True)

    train = data.load("fashion_mnist", "train", data_dir=args.data_dir)
    test = data.load("fashion_mnist", "test", data_dir=args.data_dir)
    if not 1 <= args.queries <= len(test.images):
        raise SystemExit(f"--queries must be between 1 and {len(test.images)}, got {args.queries}.")
    train_x = train.images.reshape(len(train.images), -1)
    train_y = train.labels
    test_x = test.images[: args.queries].reshape(args.queries, -1)
    test_y = test.labels[: args.queries]
    num_classes = train.num_classes
    peers = [p for p in args.peers.split(",") if p]
    metrics = [m for m in args.metrics.split(",") if m]
    rows = []

    def record(method, metric, seconds, memory_mib, predictions, extra=None):
        row = {
            "method": method,
            "metric": metric,
            "seconds": seconds,
            "queries_per_s": args.queries / seconds,
            "accuracy": float(np.mean(predictions == test_y)),
            "peak_added_mib": memory_mib,
            "predictions": predictions,
        }
        row.update(extra or {})
        rows.append(row)
        print(f"{method:>14s} {metric}: {seconds:8.3f} s  accuracy {row['accuracy']:.4f}  "
              f"+{memory_mib:.0f} MiB", flush=True)

    for metric in metrics:
        methods = {}  # name -> (predict function, extra fields)
        # cnnlab: the first call compiles (timed separately); the timed calls reuse the executable.
        began = time.perf_counter()
        knn.predict(train_x, train_y, test_x, k=args.k, metric=metric, tie_break="smallest_label")
        first_call = time.perf_counter() - began
        methods["cnnlab"] = (
            lambda: knn.predict(train_x, train_y, test_x, k=args.k, metric=metric, tie_break="smallest_label"),
            {"first_call_s_with_compile": first_call})

        if "sklearn" in peers:
            from sklearn.neighbors import KNeighborsClassifier

            model = KNeighborsClassifier(n_neighbors=args.k, algorithm="brute",
                                         metric={"l1": "manhattan", "l2": "euclidean"}[metric]).fit(train_x, train_y)
            methods["scikit-learn"] = (lambda: model.predict(test_x), {})

        if "faiss" in peers:
            import faiss

            train_f32 = np.ascontiguousarray(train_x, dtype=np.float32)
            test_f32 = np.ascontiguousarray(test_x, dtype=np.float32)
            index = faiss.IndexFlatL2(train_f32.shape[1]) if metric == "l2" else \
                faiss.IndexFlat(train_f32.shape[1], faiss.METRIC_L1)
            index.add(train_f32)

            def faiss_predict(index=index, test_f32=test_f32):
                _, idx = index.search(test_f32, args.k)
                return _vote_smallest_label(train_y[idx], num_classes)

            methods["faiss-cpu"] = (faiss_predict, {"faiss_threads": faiss.omp_get_max_threads()})

        if "numpy" in peers and metric == "l2":
            numpy_train = train_x.astype(np.float32)
            numpy_test = test_x.astype(np.float32)
            train_sq = (numpy_train * numpy_train).sum(1)

            def numpy_predict():
                dist = (numpy_test * numpy_test).sum(1)[:, None] - 2 * numpy_test @ numpy_train.T + train_sq[None, :]
                idx = np.argpartition(dist, args.k - 1, axis=1)[:, : args.k]
                return _vote_smallest_label(train_y[idx], num_classes)

            methods["numpy no-loop"] = (numpy_predict, {})

        # Round robin, so that changes in the load of a shared machine hit every method alike; a method stops
        # being repeated once it has used --budget_s seconds (slow peers run --min_repeats times).
        all_seconds = {name: [] for name in methods}
        all_cpu = {name: [] for name in methods}  # process CPU time: less sensitive to other jobs' load
        best = {name: float("inf") for name in methods}
        peak = {name: 0.0 for name in methods}
        spent = {name: 0.0 for name in methods}
        runs = {name: 0 for name in methods}
        results = {}
        for round_index in range(args.repeats):
            for name, (fn, _) in methods.items():
                if round_index >= args.min_repeats and spent[name] >= args.budget_s:
                    continue
                seconds, cpu_seconds, memory, results[name] = _timed(fn)
                best[name], peak[name] = min(best[name], seconds), max(peak[name], memory)
                all_seconds[name].append(round(seconds, 4))
                all_cpu[name].append(round(cpu_seconds, 4))
                spent[name] += seconds
                runs[name] += 1
        for name, (_, extra) in methods.items():
            record(name, metric, best[name], peak[name], results[name],
                   {"timed_runs": runs[name], "seconds_all_runs": all_seconds[name],
                    "cpu_seconds_all_runs": all_cpu[name], **extra})
        del methods

    reference = {r["metric"]: r["predictions"] for r in rows if r["method"] == "scikit-learn"}
    cnnlab_seconds = {r["metric"]: r["seconds"] for r in rows if r["method"] == "cnnlab"}
    for row in rows:
        ref = reference.get(row["metric"])
        row["equal_to_sklearn"] = None if ref is None else bool(np.array_equal(row["predictions"], ref))
        row["time_over_cnnlab"] = row["seconds"] / cnnlab_seconds[row["metric"]]
        del row["predictions"]

    cpu = _cpu_info()
    result = {
        "dataset": "fashion_mnist",
        "train_size": int(len(train_x)),
        "queries": args.queries,
        "k": args.k,
        "device": f"{jax.devices()[0].platform}: {cpu['model']}, {cpu['cores_usable']} of {cpu['cores']} cores",
        "cpu": cpu,
        "isa": isa,
        "emulation": None if args.isa == "native" else
        "AVX2-only CPU emulated by ISA limits on this CPU (same cores, caches, clock), not measured on one",
        "load_average_1_5_15_min": {"before": [round(v, 2) for v in load_before],
                                    "after": [round(v, 2) for v in os.getloadavg()]},
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "gpu": "not measured (no accelerator lent to this task)",
        "rows": rows,
    }
    lines = [
        f"kNN on Fashion-MNIST: 60,000 x 784 uint8 training images, {args.queries} queries, k={args.k} "
        f"({result['device']}; ISA {args.isa}{', emulated' if args.isa != 'native' else ''}; load average "
        f"{result['load_average_1_5_15_min']['before'][0]:.1f} before, "
        f"{result['load_average_1_5_15_min']['after'][0]:.1f} after).",
        "",
        "| metric | method | seconds (best) | all runs (s) | queries/s | accuracy | = scikit-learn | peak +MiB | "
        "time / cnnlab's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        equal = {None: "-", True: "yes", False: "no"}[row["equal_to_sklearn"]]
        runs = ", ".join(f"{t:.3f}" for t in row["seconds_all_runs"])
        lines.append(f"| {row['metric'].upper()} | {row['method']} | {row['seconds']:.3f} | {runs} | "
                     f"{row['queries_per_s']:.0f} | {row['accuracy']:.4f} | {equal} | {row['peak_added_mib']:.0f} | "
                     f"{row['time_over_cnnlab']:.2f} |")
    table = "\n".join(lines) + "\n"
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "knn_bench.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out_dir, "knn_bench.md"), "w") as f:
        f.write(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
