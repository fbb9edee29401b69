"""cnnlab.knn.search against a brute-force numpy reference (int64 / float64), 1 vs 8 devices, memory, errors."""

import jax
import numpy as np
import pytest

from _knn_reference import one_device_mesh, reference_nearest
from cnnlab import knn
from cnnlab.knn import search
from cnnlab.parallel import make_data_mesh


def test_conftest_gives_eight_devices():
    assert len(jax.devices()) == 8


@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize(
    "dtype, low, high",
    [
        (np.uint8, 0, 256),  # the image path: exact float16 L1 / float32-accumulated L2 on centred values
        (np.uint8, 0, 3),  # few values: many equal distances (ties broken by the lower index)
        (np.int16, -40, 160),  # small range at an offset: same exact paths after shifting
        (np.int32, -2000, 2000),  # wide range: direct int32 differences
        (np.bool_, 0, 2),
    ],
)
def test_exact_against_bruteforce_on_1_and_8_devices(metric, dtype, low, high):
    rng = np.random.default_rng(0)
    train = rng.integers(low, high, (203, 5, 5)).astype(dtype)  # 203: ragged training blocks and device slices
    train[50] = train[7]  # exact duplicates: equal distances to every query
    train[190] = train[7]
    queries = rng.integers(low, high, (37, 5, 5)).astype(dtype)
    queries[3] = train[7]  # distance 0 to three training points
    k = 9
    want_d, want_i = reference_nearest(train, queries, k, metric)
    for mesh in (one_device_mesh(), make_data_mesh()):
        d, i = knn.nearest(train, queries, k=k, metric=metric, mesh=mesh, query_block=16, train_block=32)
        np.testing.assert_array_equal(np.asarray(i), want_i)
        if metric == "l1":
            assert np.asarray(d).dtype == np.int32
            np.testing.assert_array_equal(np.asarray(d), want_d)
        else:
            np.testing.assert_allclose(np.asarray(d), np.sqrt(want_d), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(i)[3, :3], [7, 50, 190])


def test_uint8_extremes_are_exact_where_float32_expansion_would_round():
    # Squared distances near 255^2 * 782 = 50.8e6 > 2^24 that differ by 1: a float32 |q|^2 - 2 q.x + |x|^2 has
    # a spacing of 4 there and scrambles the order; cnnlab's must not.
    pairs = [(5, 5), (0, 7), (7, 1), (1, 7), (3, 6), (6, 3), (2, 7), (4, 6), (7, 0), (6, 4), (0, 0), (1, 1)]
    train = np.full((len(pairs), 784), 255, np.uint8)
    train[:, :2] = pairs
    queries = np.zeros((2, 784), np.uint8)
    want_d, want_i = reference_nearest(train, queries, len(pairs), "l2")
    naive = (train.astype(np.float32) ** 2).sum(1)  # |x|^2 - 2 q.x + |q|^2 with q = 0, in float32
    assert not np.array_equal(np.lexsort((np.arange(len(pairs)), naive)), want_i[0])
    for metric in ("l1", "l2"):
        want_d, want_i = reference_nearest(train, queries, len(pairs), metric)
        d, i = knn.nearest(train, queries, k=len(pairs), metric=metric, mesh=one_device_mesh())
        np.testing.assert_array_equal(np.asarray(i), want_i)
        if metric == "l1":
            np.testing.assert_array_equal(np.asarray(d), want_d)


@pytest.mark.parametrize("metric", ["l1", "l2"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, jax.numpy.bfloat16])
def test_float_inputs_match_float64_reference(metric, dtype):
    rng = np.random.default_rng(2)
    train = rng.normal(size=(150, 12)).astype(dtype)
    queries = rng.normal(size=(20, 12)).astype(dtype)
    want_d, want_i = reference_nearest(train, queries, 7, metric)
    d, i = knn.nearest(train, queries, k=7, metric=metric, query_block=8, train_block=64)
    np.testing.assert_array_equal(np.asarray(i), want_i)
    want = want_d if metric == "l1" else np.sqrt(want_d)
    np.testing.assert_allclose(np.asarray(d), want, rtol=1e-4, atol=1e-4)


def test_k_equal_to_training_size_and_images_flattened():
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    queries = rng.integers(0, 256, (6, 48), dtype=np.uint8)  # same features, different shape
    want_d, want_i = reference_nearest(train, queries, 40, "l2")
    _, i = knn.nearest(train, queries, k=40, metric="l2")
    np.testing.assert_array_equal(np.asarray(i), want_i)


def test_sharded_digits_identical_on_1_and_8_devices():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).round().astype(np.uint8)
    train, queries = images[:1500], images[1500:]
    for metric in ("l1", "l2"):
        one = knn.nearest(train, queries, k=10, metric=metric, mesh=one_device_mesh())
        eight = knn.nearest(train, queries, k=10, metric=metric, mesh=make_data_mesh())
        np.testing.assert_array_equal(np.asarray(one[1]), np.asarray(eight[1]))
        np.testing.assert_array_equal(np.asarray(one[0]), np.asarray(eight[0]))
        assert eight[1].sharding.is_fully_replicated


@pytest.mark.parametrize("metric", ["l1", "l2"])
def test_cifar_size_problem_fits_2_gib_and_budget_shrinks_blocks(metric):
    """Compiled (not run): 50,000 x 3,072 uint8 training points, 10,000 queries. XLA's own memory analysis of
    the program: working memory (temp buffers) within 2 GiB and within the plan's estimate."""
    lowered, plan = knn.lowered_search((50_000, 3072), np.uint8, (10_000, 3072), k=10, metric=metric,
                                       mesh=one_device_mesh())
    stats = lowered.compile().memory_analysis()
    assert stats.temp_size_in_bytes <= plan.working_bytes <= knn.DEFAULT_MEMORY_BUDGET_BYTES < 2 << 30
    assert stats.argument_size_in_bytes == 50_000 * 3072 + 10_000 * 3072 + 4  # data + n_train, no copies
    small_budget = 24 << 20
    lowered, small = knn.lowered_search((50_000, 3072), np.uint8, (10_000, 3072), k=10, metric=metric,
                                        mesh=one_device_mesh(), memory_budget_bytes=small_budget)
    small_stats = lowered.compile().memory_analysis()
    assert small.query_block * small.train_block < plan.query_block * plan.train_block
    assert small_stats.temp_size_in_bytes <= small.working_bytes <= small_budget


def test_block_plan_respects_budget_and_rejects_impossible_ones():
    plan = knn.block_plan(60_000, 10_000, 784, k=10, metric="l2", memory_budget_bytes=8 << 20)
    assert plan.working_bytes <= 8 << 20
    assert plan.train_per_device == 60_000
    assert knn.block_plan(60_000, 10_000, 784, k=10, num_devices=8).train_per_device == 7500
    with pytest.raises(ValueError, match="too small"):
        knn.block_plan(60_000, 10_000, 784, k=10, memory_budget_bytes=1000)


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((10, 4), np.uint8)
    y = np.arange(10)
    with pytest.raises(ValueError, match="k must be between 1"):
        knn.nearest(x, x, k=0)
    with pytest.raises(ValueError, match="k must be between 1"):
        knn.nearest(x, x, k=11)
    with pytest.raises(TypeError, match="k must be an integer"):
        knn.nearest(x, x, k=2.5)
    with pytest.raises(ValueError, match="features"):
        knn.nearest(x, np.zeros((3, 5), np.uint8), k=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        knn.nearest(x.astype(np.float32), np.array([[0, np.nan, 0, 0]], np.float32), k=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        knn.nearest(np.full((10, 4), np.inf, np.float32), x.astype(np.float32), k=1)
    with pytest.raises(ValueError, match="empty"):
        knn.nearest(np.zeros((0, 4), np.uint8), x, k=1)
    with pytest.raises(ValueError, match="empty"):
        knn.nearest(x, np.zeros((0, 4), np.uint8), k=1)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        knn.nearest(np.zeros(10), x, k=1)
    with pytest.raises(ValueError, match="Unknown metric 'cosine'"):
        knn.nearest(x, x, k=1, metric="cosine")
    with pytest.raises(TypeError, match="integer class labels"):
        knn.predict(x, y.astype(np.float32), x, k=1)
    with pytest.raises(TypeError, match="integer class labels"):
        knn.predict(x, np.array(list("abcdefghij")), x, k=1)
    with pytest.raises(ValueError, match="one label per training point"):
        knn.predict(x, y[:5], x, k=1)
    with pytest.raises(ValueError, match="Unknown tie_break"):
        knn.predict(x, y, x, k=1, tie_break="random")
    with pytest.raises(ValueError, match="beyond int32"):
        knn.nearest(np.array([[0, 0]], np.int64), np.array([[2**40, 0]], np.int64), k=1)
    with pytest.raises(ValueError, match="folds"):
        knn.cross_validate(x, y, ks=[1], folds=1)
    with pytest.raises(ValueError, match="every k"):
        knn.cross_validate(x, y, ks=[9], folds=5)


def _exactness_cases():
    """(train, queries) pairs that every small-integer kernel must rank exactly: random bytes over the full
    range with duplicates, few distinct values (many equal distances), a shifted int16 range, and 784-feature
    points near 255 whose squared distances (~50.8e6 > 2^24) differ by 1."""
    rng = np.random.default_rng(7)
    train = rng.integers(0, 256, size=(300, 40), dtype=np.uint8)
    train[[0, 255]] = 255
    train[17] = 0
    train[90] = train[17]
    queries = rng.integers(0, 256, size=(37, 40), dtype=np.uint8)
    queries[:2] = [[0] * 40, [255] * 40]
    few = rng.integers(0, 3, size=(120, 33), dtype=np.uint8)
    shifted = rng.integers(-40, 160, size=(150, 21)).astype(np.int16)
    pairs = [(5, 5), (0, 7), (7, 1), (1, 7), (3, 6), (6, 3), (2, 7), (4, 6), (7, 0), (6, 4), (0, 0), (1, 1)]
    wide = np.full((len(pairs), 784), 255, np.uint8)
    wide[:, :2] = pairs
    return [(train, queries), (few, few[::3]), (shifted, shifted[5:40]), (wide, np.zeros((2, 784), np.uint8))]


@pytest.mark.parametrize("native_fp16, l1_dtype", [(True, np.float16), (False, np.uint8)])
def test_l1_tile_type_follows_the_cpu_and_stays_exact(monkeypatch, native_fp16, l1_dtype):
    # float16 tiles only where the CPU has AVX512-FP16; other CPUs (AVX2-only) get uint8 tiles. Both exact.
    monkeypatch.setattr(search, "cpu_has_native_fp16", lambda: native_fp16)
    search.compiled_search.cache_clear()
    try:
        assert knn.l1_tile_dtype("cpu") == l1_dtype
        assert knn.l1_tile_dtype("gpu") == np.float16
        hlo = knn.lowered_search((300, 40), np.uint8, (37, 40), k=6, metric="l1", mesh=one_device_mesh())[0]
        assert ("xui16>" in hlo.as_text()) == (l1_dtype == np.uint8)  # the uint8 kernel's chunk sums
        for train_x, queries in _exactness_cases():
            k = min(6, len(train_x))
            distances, indices = knn.nearest(train_x, queries, k=k, metric="l1", mesh=one_device_mesh())
            want_d, want_i = reference_nearest(train_x, queries, k, "l1")
            np.testing.assert_array_equal(np.asarray(indices), want_i)
            np.testing.assert_array_equal(np.asarray(distances), want_d)
    finally:
        search.compiled_search.cache_clear()


@pytest.mark.parametrize("operand_dtype, hlo_marker", [(np.int8, "xi8>"), (jax.numpy.bfloat16, "xbf16>"),
                                                        (np.float32, "tensor<37x300xf32>")])
def test_every_l2_product_type_is_exact_on_cpu(monkeypatch, operand_dtype, hlo_marker):
    # int8 x int8 -> int32 is the CPU path; bfloat16 (float32 accumulation) is the accelerator path and float32
    # the previous CPU one: forced here on the CPU, each must rank exactly like the int64 reference.
    assert knn.l2_operand_dtype("cpu") == np.int8 and knn.l2_operand_dtype("gpu") == jax.numpy.bfloat16
    monkeypatch.setattr(search, "l2_operand_dtype", lambda platform: operand_dtype)
    search.compiled_search.cache_clear()
    try:
        hlo = knn.lowered_search((300, 40), np.uint8, (37, 40), k=6, metric="l2", mesh=one_device_mesh(),
                                 query_block=37, train_block=300)[0]
        assert hlo_marker in hlo.as_text()
        for train_x, queries in _exactness_cases():
            k = min(6, len(train_x))
            distances, indices = knn.nearest(train_x, queries, k=k, metric="l2", mesh=one_device_mesh())
            want_d, want_i = reference_nearest(train_x, queries, k, "l2")
            np.testing.assert_array_equal(np.asarray(indices), want_i)
            np.testing.assert_allclose(np.asarray(distances), np.sqrt(want_d), rtol=1e-6)
    finally:
        search.compiled_search.cache_clear()


@pytest.mark.parametrize("option, value", [("query_block", 0), ("train_block", 0), ("query_block", -4),
                                           ("train_block", -1)])
def test_zero_or_negative_block_sizes_are_rejected_not_taken_as_default(option, value):
    x = np.zeros((10, 4), np.uint8)
    with pytest.raises(ValueError, match=f"{option} must be a positive integer or None"):
        knn.nearest(x, x, k=1, **{option: value})
    with pytest.raises(ValueError, match=f"{option} must be a positive integer or None"):
        knn.block_plan(10, 10, 4, k=1, **{option: value})
    with pytest.raises(TypeError, match=f"{option} must be a positive integer"):
        knn.block_plan(10, 10, 4, k=1, **{option: 2.5})
    assert knn.block_plan(10, 10, 4, k=1, **{option: None}) == knn.block_plan(10, 10, 4, k=1)


@pytest.mark.parametrize("xla_flags, cpu_flags, native", [
    ("", {"avx2", "avx512f", "avx512_fp16"}, True),
    ("--xla_cpu_max_isa=AVX2", {"avx2", "avx512f", "avx512_fp16"}, False),  # emulating an AVX2 machine
    ("--xla_cpu_prefer_vector_width=512 --xla_cpu_max_isa=avx512", {"avx512_fp16"}, True),
    ("", {"avx2", "fma"}, False),  # AMD EPYC (Zen 2/3) class
])
def test_native_fp16_needs_the_cpu_flag_and_an_xla_isa_ceiling_above_avx2(monkeypatch, xla_flags, cpu_flags,
                                                                          native):
    monkeypatch.setenv("XLA_FLAGS", xla_flags)
    monkeypatch.setattr(search, "cpu_flags", lambda: frozenset(cpu_flags))
    assert search.cpu_has_native_fp16() is native
    assert knn.l1_tile_dtype("cpu") == (np.float16 if native else np.uint8)


def test_default_query_blocks_are_balanced_so_the_clamped_last_block_recomputes_little():
    # 300 queries: two blocks of 160 (320 rows computed), not 256 + a clamped 256 (512 rows).
    assert knn.block_plan(60_000, 300, 784, k=10, metric="l2").query_block == 160
    assert knn.block_plan(60_000, 1000, 784, k=10, metric="l2").query_block == 256
    assert knn.block_plan(60_000, 300, 784, k=10, metric="l1").query_block == 64
    assert knn.block_plan(60_000, 37, 784, k=10, metric="l2").query_block == 37
    assert knn.block_plan(60_000, 300, 784, k=10, query_block=256).query_block == 256  # explicit sizes kept
