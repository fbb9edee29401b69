"""experiments/bench/knn.py's machinery for naming the CPU and emulating an AVX2-only one."""

import os
import subprocess
import sys

import pytest

from experiments.bench import knn as bench

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_widest_vector_is_read_from_the_probe_ir_only(tmp_path):
    (tmp_path / "module_0007.jit_isa_probe.__compute_module_fusion.ir-with-opt.ll").write_text(
        "%1 = fsub <16 x half> %a, %b\n%2 = fpext <8 x half> %c to <8 x float>\n")
    (tmp_path / "module_0009.jit_other.ir-with-opt.ll").write_text("%1 = fsub <32 x half> %a, %b\n")
    assert bench._xla_widest_vector_bits(str(tmp_path)) == 256
    (tmp_path / "module_0011.jit_isa_probe.__compute_module_wrapped.ir-with-opt.ll").write_text("<32 x half>")
    assert bench._xla_widest_vector_bits(str(tmp_path)) == 512


def test_cpu_info_names_the_model_and_only_vector_flags():
    info = bench._cpu_info()
    assert info["model"] and 1 <= info["cores_usable"] <= info["cores"]
    assert set(info["vector_flags"]) <= set(bench._VECTOR_FLAGS)
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
        assert ("avx2" in flags) == ("avx2" in info["vector_flags"])


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_ynnpack_limited_to_avx2_keeps_the_int8_product_exact():
    # In a fresh process (the mask is process-wide): the mask is written before the first product and read
    # back, and an int8 x int8 -> int32 product through YNNPACK's AVX2 kernels is still exact.
    code = """
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from experiments.bench import knn as bench
found = bench._limit_ynnpack_to_avx2()
assert found["ynnpack_arch_mask"] == hex(bench._YNN_AVX2_MASK), found
rng = np.random.default_rng(0)
a = rng.integers(-128, 128, (64, 784)).astype(np.int8)
b = rng.integers(-128, 128, (96, 784)).astype(np.int8)
got = lax.dot_general(jnp.asarray(a), jnp.asarray(b), (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
assert np.array_equal(np.asarray(got), a.astype(np.int64) @ b.astype(np.int64).T)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if "binutils' `nm`" in result.stderr + result.stdout or "was not found" in result.stderr + result.stdout:
        pytest.skip("YNNPACK's feature mask cannot be located here (no nm or another jaxlib build)")
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
