"""The model benchmark script runs end to end on a tiny configuration and reports sensible FLOPs."""

import json

from experiments.bench import models as bench


def test_bench_lenet5_writes_json_and_table(tmp_path):
    out = tmp_path / "bench.json"
    report = bench.main(["--models=lenet5", "--batch=4", "--min_time=0", "--min_steps=1", "--torch_peer=0",
                         f"--out={out}"])
    saved = json.loads(out.read_text())
    assert saved["complete"] is True and saved["results"] == json.loads(json.dumps(report["results"]))
    (result,) = saved["results"]
    assert result["model"] == "lenet5" and result["input_shape"] == [4, 28, 28, 1]
    assert result["num_params"] == 61_706 and result["images_per_s"] > 0
    # Multiply-adds LeNet-5 executes on a 32x32 (padded) image, about 2 FLOPs each (XLA counts a dot of length K as
    # 2K - 1 FLOPs, and adds bias adds, activations and pooling). Each conv + 2x2 pool block is one matrix product
    # (cnnlab/models/conv_pool.py): per pooled position, a 6x6xC patch times a [36*C, 4*O] matrix.
    macs = 14 * 14 * (6 * 6 * 1) * (4 * 6) + 5 * 5 * (6 * 6 * 6) * (4 * 16) + 400 * 120 + 120 * 84 + 84 * 10
    forward = result["forward_gflops_per_image"] * 1e9
    assert 0.95 * 2 * macs <= forward <= 1.3 * 2 * macs
    # backward costs about twice the forward pass
    assert 2.0 * forward <= result["train_step_gflops_per_image"] * 1e9 <= 4.0 * forward
    table = (tmp_path / "bench.md").read_text()
    assert "| lenet5 | (4, 28, 28, 1) | 61,706 |" in table


def test_train_bench_records_the_isa_each_library_was_limited_to(monkeypatch):
    """experiments/bench/train.py: the JSON names the CPU's SIMD flags, the limits set, and what oneDNN really ran."""
    import pytest

    pytest.importorskip("torch")
    from experiments.bench import train as train_bench

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    report = train_bench.isa_report()
    assert report["ONEDNN_MAX_CPU_ISA"] == "AVX2" and report["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "avx2" in report["cpu_simd_flags"]  # every CPU these benchmarks target has it
    assert "AVX2" in report["onednn_isa"] and "avx512" not in " ".join(report["onednn_conv_kernels"])
    assert all(isinstance(t, float) and t > 0 for t in report["xla_matmul_probe"].values())
    results = {"threads": 2, "cpu": "test CPU", "batch": 4, "rounds": 1, "isa": report,
               "load_average_before": [0.5], "load_average_after": [0.7],
               "models": {"resnet20": {"images_per_s_best": {"pytorch eager": 10.0, "cnnlab": 12.0},
                                       "images_per_s_median": {"pytorch eager": 9.0, "cnnlab": 11.0},
                                       "ratio_best_vs_pytorch": {"pytorch eager": 1.0, "cnnlab": 1.2}}}}
    table = train_bench.markdown_table(results)
    assert "ONEDNN_MAX_CPU_ISA='AVX2'" in table and "| resnet20 | cnnlab | 12 | 11 | 1.20 |" in table
