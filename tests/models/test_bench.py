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
