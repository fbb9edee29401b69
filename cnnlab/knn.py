"""Exact k-nearest neighbours: blocked distances, streaming top-k, majority vote, sharded training set, CV.

The lecture's first classifier: a query gets the majority label of its k nearest training points under the L1
distance (sum of absolute differences) or L2 (Euclidean distance).

    distances, indices = nearest(train_x, queries, k=10, metric="l2")        # [Q, k] each, sorted
    labels = predict(train_x, train_y, queries, k=5, metric="l1")           # [Q]
    cv = cross_validate(train_x, train_y, ks=(1, 3, 5), metrics=("l1", "l2"))

How it works (one jitted program):
  * The training set is split over a 1-D device mesh (axis ``"data"``); every device owns a contiguous slice.
  * Each device streams over its slice in training blocks and, inside, over the queries in query blocks. A
    [query_block, train_block] tile of distances is computed, reduced to its k best (a group-minimum
    pre-filter, then ``lax.top_k`` on the few surviving groups), and merged into the running top-k of those
    queries. The full [Q, N] distance matrix never exists; peak memory is set by the block sizes (see
    ``block_plan``), not by N or Q.
  * One global merge: the devices' [Q, k] lists are all-gathered and merged with one top-k. Devices hold
    contiguous, increasing index ranges and every list is ordered by (distance, index), so a stable top-k over
    the concatenation keeps the "ties go to the lower training index" rule; results are identical for any
    device count.

Exactness (DESIGN.md section 4):
  * Integer inputs whose value range spans at most 255 (uint8 images, int8, bool, small-range ints):
      L2: values are centred to [-128, 127] (exact in bfloat16 and float32), the dot products are computed in
          float32 accumulation over feature chunks of at most 1024 features (|sum| <= 1024 * 128^2 = 2^24, so
          every partial sum is an exactly representable integer), converted to int32 and combined into the
          exact squared distance |q|^2 - 2 q.x + |x|^2 in int32. On GPU/TPU the operands are bfloat16 (the
          fast matrix unit path), on CPU float32 (same exact values).
      L1: |a - b| of values in [0, 255] and sums of 8 such terms (<= 2040 < 2^11) are exact in float16; the
          per-chunk sums are added in float32 (exact below 2^24) or int32. float16 is the fastest exact type
          on CPUs with AVX512-FP16 and on GPUs.
  * Other integer inputs: direct integer differences accumulated in int32 (int64 with jax_enable_x64); a
    range whose worst-case distance does not fit raises a ValueError instead of silently rounding.
  * Float inputs follow float semantics: L2 by the same matrix-product expansion in float32 (HIGHEST
    precision, clamped at 0), L1 by direct differences.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

METRICS = ("l1", "l2")
TIE_BREAKS = ("nearest", "smallest_label")
DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30  # 1 GiB of working memory per device beyond inputs
_MESH_AXIS = "data"
_GROUP = 16  # columns per group in the group-minimum top-k pre-filter
_L1_MICRO_QUERIES = 16  # micro-tile of the L1 kernel (measured best on AVX512 CPUs: 16 x 256..1024)
_L1_MICRO_TRAIN = 256
_L1_CHUNK = 8  # features summed in float16: 8 * 255 = 2040 < 2048, exact
_L2_CHUNK_LIMIT = 1 << 24  # float32 represents every integer up to 2^24 exactly


# ----------------------------------------------------------------------------------------------------------
# Input checking and the exact-arithmetic mode
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Mode:
    """How distances are computed: 'small_int' (span <= 255, exact fast paths), 'int' (exact, direct
    differences in ``int_dtype``) or 'float'. ``offset`` is subtracted from integer values first."""

    kind: str
    offset: int = 0
    int_dtype: Any = None


def _as_2d(x, name: str) -> tuple[Any, tuple[int, ...]]:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape [N, features...] (at least 2 dimensions), got shape {tuple(x.shape)}. "
            "For one query use queries[None]; for scalar features use x[:, None]."
        )
    if x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); give at least one point with one feature.")
    dtype = np.dtype(x.dtype)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating) or dtype == np.bool_):
        raise TypeError(f"{name} must have a real or integer dtype, got {dtype}.")
    return x.reshape(x.shape[0], -1), tuple(x.shape[1:])


def _value_range(x) -> tuple[float, float]:
    if isinstance(x, np.ndarray):
        return float(x.min()), float(x.max())
    return float(jnp.min(x)), float(jnp.max(x))


def _check_finite(x, name: str) -> None:
    dtype = np.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        return
    finite = np.isfinite(x).all() if isinstance(x, np.ndarray) else bool(jnp.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values; remove or impute them before kNN.")


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; known metrics: {list(METRICS)}.")
    return metric


def _mode_for(train_x, queries, metric: str) -> _Mode:
    """Chooses the exact arithmetic for the dtypes and value range of both inputs (host-side, before jit)."""
    dtypes = [np.dtype(train_x.dtype), np.dtype(queries.dtype)]
    dim = math.prod(train_x.shape[1:])
    if any(jnp.issubdtype(d, jnp.floating) for d in dtypes):
        largest = max(abs(v) for v in (*_value_range(train_x), *_value_range(queries)))
        float_max = float(jnp.finfo(_dist_dtype(_Mode("float"))).max)
        if dim * (2 * largest) ** 2 >= float_max:
            raise ValueError(
                f"Float inputs as large as {largest:g} can overflow the {metric} distance over {dim} features; "
                "rescale the data (e.g. to [0, 1])."
            )
        return _Mode("float")
    if all(d in (np.dtype(np.uint8), np.dtype(np.bool_)) for d in dtypes):
        lo, hi = 0, 255
    else:
        lo_t, hi_t = _value_range(train_x)
        lo_q, hi_q = _value_range(queries)
        lo, hi = int(min(lo_t, lo_q)), int(max(hi_t, hi_q))
    span = hi - lo
    worst = dim * (span if metric == "l1" else span * span)
    if worst < _KEY_LIMIT[4]:
        return _Mode("small_int", offset=lo) if span <= 255 else _Mode("int", offset=lo, int_dtype=jnp.int32)
    if jax.config.jax_enable_x64 and worst < _KEY_LIMIT[8]:
        return _Mode("int", offset=lo, int_dtype=jnp.int64)
    raise ValueError(
        f"Integer inputs with value range [{lo}, {hi}] and {dim} features can reach a {metric} distance of "
        f"{worst}, beyond int32; enable jax_enable_x64 for int64 distances, or pass float arrays."
    )


# ----------------------------------------------------------------------------------------------------------
# Block plan: block sizes and the memory they need
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Block sizes of one ``nearest`` call and an upper estimate of its working memory per device.

    query_block, train_block: tile shape [query_block, train_block] of distances computed at a time.
    train_per_device: training rows on each device (the training set padded to a multiple of the devices).
    working_bytes: estimated peak memory beyond the inputs, per device (tiles, converted blocks, top-k state).
    """

    query_block: int
    train_block: int
    num_queries: int
    train_per_device: int
    num_devices: int
    dim: int
    k: int
    working_bytes: int


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _working_bytes(metric: str, mode: str, qb: int, tb: int, dim: int, k: int, num_queries: int) -> int:
    tile = qb * tb * 4
    state = num_queries * k * 8 * 3  # running distances + indices, the updated copy, the final gather
    candidates = qb * min(tb, k * _GROUP) * 8 * 3 + qb * (tb // _GROUP) * 8
    if metric == "l2" and mode != "int":
        # sliced and converted train and query blocks (XLA keeps two copies of the converted block: the loop
        # carries it into the query loop), norms
        blocks = (tb + qb) * dim * (2 * 4 + 1) + tb * 8
        tiles = 5 * tile  # float dot, int dot sum, distance, top-k key
    else:
        blocks = (tb + qb) * _round_up(dim, _L1_CHUNK) * 4 * 2  # transposed/converted blocks (+ padding copy)
        tiles = 4 * tile + 2 * tile  # micro-tile outputs, their transpose, distance, key
    return int(state + candidates + blocks + tiles)


def block_plan(
    n_train: int,
    n_queries: int,
    dim: int,
    *,
    k: int,
    metric: str = "l2",
    mode: str = "small_int",
    num_devices: int = 1,
    query_block: int | None = None,
    train_block: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> BlockPlan:
    """Chooses block sizes so the working memory per device stays within ``memory_budget_bytes``.

    Defaults (measured on 2-core AVX512 CPUs with Fashion-MNIST): L2 tiles of 256 queries x 4096 training
    points (matrix products large enough to run near peak), L1 tiles of 64 x 2048. Blocks shrink to the
    problem size and halve until the estimate fits the budget; a budget too small even for the smallest
    blocks raises a ValueError.
    """
    _check_metric(metric)
    per_device = -(-n_train // num_devices)
    default_qb, default_tb = (256, 4096) if metric == "l2" and mode != "int" else (64, 2048)
    qb = query_block or default_qb
    tb = train_block or default_tb
    if qb < 1 or tb < 1:
        raise ValueError(f"query_block and train_block must be positive, got {qb} and {tb}.")
    qb = min(qb, n_queries)
    unit = _GROUP
    tb = min(_round_up(tb, unit), _round_up(per_device, unit))
    while True:
        need = _working_bytes(metric, mode, qb, tb, dim, k, n_queries)
        if need <= memory_budget_bytes:
            break
        if tb > 4 * unit and tb >= qb:
            tb = _round_up(tb // 2, unit)
        elif qb > 1:
            qb = -(-qb // 2)
        else:
            raise ValueError(
                f"memory_budget_bytes={memory_budget_bytes} is too small for k={k} and {n_queries} queries "
                f"(smallest blocks need {need} bytes); raise the budget or search fewer queries per call."
            )
    return BlockPlan(
        query_block=int(qb),
        train_block=int(tb),
        num_queries=int(n_queries),
        train_per_device=int(_round_up(per_device, 1)),
        num_devices=int(num_devices),
        dim=int(dim),
        k=int(k),
        working_bytes=int(need),
    )


# ----------------------------------------------------------------------------------------------------------
# Distance tiles
# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cpu_has_native_fp16() -> bool:
    """Whether this host CPU does float16 arithmetic natively (x86 AVX512-FP16, e.g. Sapphire Rapids).
    Elsewhere (AVX2-only x86 such as many AMD EPYC parts) XLA:CPU emulates float16 through float32
    conversions, which makes the float16 L1 tile slower than a plain float32 one."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512_fp16" in line for line in f)
    except OSError:
        return False


def l1_tile_dtype(platform: str):
    """Element type of the exact L1 tile for 8-bit data: float16 where it is native (accelerators, CPUs with
    AVX512-FP16), float32 otherwise. Both are exact: sums of 8 differences (<= 2040) fit float16's 11-bit
    significand, and every partial sum stays below 2^24 in float32."""
    if platform != "cpu" or cpu_has_native_fp16():
        return jnp.float16
    return jnp.float32


def _fast_dtype(platform: str):
    """Operand type of the exact L2 matrix product: bfloat16 on accelerators, float32 on CPU (XLA:CPU runs
    float32 products faster than bfloat16 ones; both carry centred 8-bit values exactly)."""
    return jnp.float32 if platform == "cpu" else jnp.bfloat16


def _centred(x, mode: _Mode, dtype):
    if x.dtype == jnp.uint8 and mode.offset == 0:
        return (x.astype(jnp.int16) - 128).astype(dtype)
    return (x.astype(jnp.int32) - (mode.offset + 128)).astype(dtype)


def _pad_features(x, multiple: int, axis: int):
    dim = x.shape[axis]
    extra = _round_up(dim, multiple) - dim
    if not extra:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, extra)
    return jnp.pad(x, pad)


def _micro_split(xT, mt: int):
    """[D, tb] -> [tb / mt, D, mt] micro-blocks of training columns (or [1, D, tb] if mt does not divide)."""
    dim, tb = xT.shape
    mt = min(mt, tb)
    if tb % mt:
        return xT[None]
    return xT.reshape(dim, tb // mt, mt).transpose(1, 0, 2)


def _micro_tiled(kernel, q_blk, x_micro, mq: int):
    """Runs kernel([mq, D] queries, [D, mt] train) -> [mq, mt] over queries [qb, D] and training micro-blocks
    [nt, D, mt], micro-tile by micro-tile (keeps the elementwise L1 kernel's working set in the core's caches;
    measured best on AVX512 CPUs: 16 x 256). Returns [qb, nt * mt]."""
    qb, dim = q_blk.shape
    nt, _, mt = x_micro.shape
    mq = min(mq, qb)
    if qb % mq:
        mq = qb
    qs = q_blk.reshape(qb // mq, mq, dim)
    out = lax.map(lambda xx: lax.map(lambda qq: kernel(qq, xx), qs), x_micro)  # [nt, qb/mq, mq, mt]
    return out.transpose(1, 2, 0, 3).reshape(qb, nt * mt)


@dataclasses.dataclass(frozen=True)
class _Kernel:
    """Distance tiles of one (metric, mode): ``prepare_train`` runs once per training block (so conversions,
    transposes and norms are not repeated for every query block), ``prepare_queries`` once per query block,
    ``tile`` gives the [qb, tb] distances in the distance dtype (squared for L2)."""

    prepare_train: Any
    prepare_queries: Any
    tile: Any


def _kernel_for(metric: str, mode: _Mode, platform: str, dim: int, dist_dtype) -> _Kernel:
    if metric == "l2" and mode.kind == "small_int":
        # Exact: centred values in [-128, 127]; float32 accumulation over <= 1024 features stays <= 2^24.
        dtype = _fast_dtype(platform)
        chunk = min(dim, _L2_CHUNK_LIMIT // (128 * 128))

        def norms(c):
            c = c.astype(jnp.int32)
            return jnp.sum(c * c, axis=1, dtype=jnp.int32)

        def prepare(x):
            # Feature chunks as separate contiguous arrays, made once per block (not sliced per tile).
            chunks = tuple(_centred(x[:, lo : lo + chunk], mode, dtype) for lo in range(0, dim, chunk))
            return chunks, norms(_centred(x, mode, jnp.int32))

        def tile(q, x):
            (q_chunks, qn), (x_chunks, xn) = q, x
            dot = None
            for qc, xc in zip(q_chunks, x_chunks):
                part = lax.dot_general(
                    qc, xc, (((1,), (1,)), ((), ())),
                    preferred_element_type=jnp.float32, precision=lax.Precision.HIGHEST,
                ).astype(jnp.int32)
                dot = part if dot is None else dot + part
            return qn[:, None] + xn[None, :] - 2 * dot

        return _Kernel(prepare, prepare, tile)

    if metric == "l2" and mode.kind == "float":

        def prepare(x):
            x = x.astype(dist_dtype)
            return x, jnp.sum(x * x, axis=1)

        def tile(q, x):
            (qf, qn), (xf, xn) = q, x
            dot = lax.dot_general(qf, xf, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST)
            return jnp.maximum(qn[:, None] + xn[None, :] - 2 * dot, 0)

        return _Kernel(prepare, prepare, tile)

    if metric == "l1" and mode.kind == "small_int" and dim * 255 < _L2_CHUNK_LIMIT:
        # Exact: values in [0, 255] and sums of 8 differences (<= 2040) are exact in float16 (and float32), the
        # float32 total of the chunk sums stays below 2^24.
        tile_dtype = l1_tile_dtype(platform)

        def to_f16(x):
            if x.dtype == jnp.uint8 and mode.offset == 0:
                return x.astype(tile_dtype)
            return (x.astype(jnp.int32) - mode.offset).astype(tile_dtype)

        def kernel(qq, xx):
            mq, d8 = qq.shape
            diff = jnp.abs(qq[:, :, None] - xx[None, :, :])
            chunk_sums = diff.reshape(mq, d8 // _L1_CHUNK, _L1_CHUNK, xx.shape[1]).sum(axis=2, dtype=tile_dtype)
            return chunk_sums.astype(jnp.float32).sum(axis=1).astype(jnp.int32)

        return _Kernel(
            lambda x: _micro_split(_pad_features(to_f16(x).T, _L1_CHUNK, 0), _L1_MICRO_TRAIN),
            lambda q: _pad_features(to_f16(q), _L1_CHUNK, 1),
            lambda q, x: _micro_tiled(kernel, q, x, _L1_MICRO_QUERIES),
        )

    # Direct differences: exact integer accumulation (int modes, or small ints with very many features) or
    # float semantics.
    acc_dtype = dist_dtype
    offset = mode.offset if mode.kind != "float" else 0

    def convert(x):
        x = x.astype(acc_dtype)
        return x - offset if offset else x

    def kernel(qq, xx):
        diff = qq[:, :, None] - xx[None, :, :]
        terms = jnp.abs(diff) if metric == "l1" else diff * diff
        return jnp.sum(terms, axis=1, dtype=acc_dtype)

    return _Kernel(
        lambda x: _micro_split(convert(x).T, _L1_MICRO_TRAIN),
        convert,
        lambda q, x: _micro_tiled(kernel, q, x, _L1_MICRO_QUERIES),
    )


# ----------------------------------------------------------------------------------------------------------
# Streaming top-k
# ----------------------------------------------------------------------------------------------------------


# Integer distances are ranked as floats with the same bits: d + 2^23 (int32) or d + 2^52 (int64) reinterpreted
# as float32/float64 is a positive normal float whose order is the integer order (IEEE-754 bit patterns of
# positive floats are monotone; the offset keeps them clear of denormals, which CPUs may flush to zero), and
# +inf stays above every key. XLA:CPU's top-k is ~50x faster on float32 than on int32, so the key costs nothing
# and buys the fast top-k.
_KEY_OFFSET = {4: 1 << 23, 8: 1 << 52}
_KEY_LIMIT = {4: 0x7F800000 - (1 << 23), 8: 0x7FF0000000000000 - (1 << 52)}  # distances below stay finite


def _key_dtype(dist_dtype):
    if jnp.issubdtype(dist_dtype, jnp.floating):
        return jnp.dtype(dist_dtype)
    return jnp.dtype(jnp.float32 if jnp.dtype(dist_dtype).itemsize == 4 else jnp.float64)


def _to_key(dist):
    if jnp.issubdtype(dist.dtype, jnp.floating):
        return dist
    size = dist.dtype.itemsize
    return lax.bitcast_convert_type(dist + _KEY_OFFSET[size], _key_dtype(dist.dtype))


def _from_key(key, dist_dtype):
    if jnp.issubdtype(dist_dtype, jnp.floating):
        return key
    size = jnp.dtype(dist_dtype).itemsize
    return lax.bitcast_convert_type(key, dist_dtype) - _KEY_OFFSET[size]


def _smallest_k(dist, k: int):
    """The k smallest entries of each row of dist [r, c], ordered by (distance, column); returns (values,
    columns). Pre-filter: the k best entries lie in the k groups of ``_GROUP`` columns with the smallest
    (group minimum, group index) -- any entry outside them is beaten by the minima of k other groups, each
    smaller, or equal and at a lower column -- so only k * _GROUP candidates reach ``lax.top_k``."""
    rows, cols = dist.shape
    if cols < k:  # a device slice smaller than k: the missing entries are +inf and lose every comparison
        dist = jnp.pad(dist, ((0, 0), (0, k - cols)), constant_values=jnp.inf)
        cols = k
    if k * _GROUP * 2 > cols or cols % _GROUP:
        neg, col = lax.top_k(-dist, k)  # stable: equal values keep the lower column first
        return -neg, col
    group_min = dist.reshape(rows, cols // _GROUP, _GROUP).min(axis=2)
    _, groups = lax.top_k(-group_min, k)
    groups = jnp.sort(groups, axis=1)  # candidates in column order keep top_k's tie rule
    cand_cols = (groups[:, :, None] * _GROUP + jnp.arange(_GROUP, dtype=groups.dtype)).reshape(rows, k * _GROUP)
    cand = jnp.take_along_axis(dist, cand_cols, axis=1)
    neg, pos = lax.top_k(-cand, k)
    return -neg, jnp.take_along_axis(cand_cols, pos, axis=1)


def _merge(best_d, best_i, new_d, new_i, k: int):
    """Merges two (distance, index) lists [r, k]; every index in ``best`` is lower than every index in
    ``new`` and both are ordered by (distance, index), so a stable top-k keeps that order."""
    d = jnp.concatenate([best_d, new_d], axis=1)
    i = jnp.concatenate([best_i, new_i], axis=1)
    neg, pos = lax.top_k(-d, k)
    return -neg, jnp.take_along_axis(i, pos, axis=1)


def _dist_dtype(mode: _Mode):
    if mode.kind == "float":
        return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    return jnp.dtype(mode.int_dtype if mode.kind == "int" else jnp.int32)


def _local_nearest(train, queries, n_valid, index_offset, *, k, metric, mode, plan, platform):
    """Top-k of all queries against one device's training slice [n_local, D]. Returns (keys [Q, k] (see
    ``_to_key``; squared distances for L2), indices [Q, k] int32 global). Training rows at or beyond ``n_valid``
    (device padding) never enter the result."""
    n_local, dim = train.shape
    num_q = queries.shape[0]
    qb, tb = plan.query_block, min(plan.train_block, n_local)
    n_tblocks, n_qblocks = -(-n_local // tb), -(-num_q // qb)

    dist_dtype = _dist_dtype(mode)
    kernel = _kernel_for(metric, mode, platform, dim, dist_dtype)
    key_dtype = _key_dtype(dist_dtype)
    init = (jnp.full((num_q, k), jnp.inf, key_dtype), jnp.full((num_q, k), jnp.iinfo(jnp.int32).max, jnp.int32))

    def train_step(t, state):
        # The last block is clamped to end at n_local; rows it shares with the previous block are masked.
        nominal = t * tb
        start = jnp.minimum(nominal, n_local - tb)
        x_prep = kernel.prepare_train(lax.dynamic_slice_in_dim(train, start, tb, axis=0))
        local_rows = start + jnp.arange(tb)
        valid = (local_rows >= nominal) & (local_rows < n_valid)

        def query_step(b, state):
            best_d, best_i = state
            nominal_q = b * qb
            q_start = jnp.minimum(nominal_q, num_q - qb)
            q_prep = kernel.prepare_queries(lax.dynamic_slice_in_dim(queries, q_start, qb, axis=0))
            tile = kernel.tile(q_prep, x_prep)
            tile = jnp.where(valid[None, :], _to_key(tile), jnp.inf)
            cand_d, cand_col = _smallest_k(tile, k)
            cand_i = (cand_col + start + index_offset).astype(jnp.int32)
            old_d = lax.dynamic_slice_in_dim(best_d, q_start, qb, axis=0)
            old_i = lax.dynamic_slice_in_dim(best_i, q_start, qb, axis=0)
            new_d, new_i = _merge(old_d, old_i, cand_d, cand_i, k)
            # Rows of a clamped last query block already merged by the previous block keep their state.
            fresh = (q_start + jnp.arange(qb) >= nominal_q)[:, None]
            new_d = jnp.where(fresh, new_d, old_d)
            new_i = jnp.where(fresh, new_i, old_i)
            best_d = lax.dynamic_update_slice_in_dim(best_d, new_d, q_start, axis=0)
            best_i = lax.dynamic_update_slice_in_dim(best_i, new_i, q_start, axis=0)
            return best_d, best_i

        return lax.fori_loop(0, n_qblocks, query_step, state)

    return lax.fori_loop(0, n_tblocks, train_step, init)


@functools.lru_cache(maxsize=64)
def _compiled_search(mesh, k: int, metric: str, mode: _Mode, plan: BlockPlan, platform: str):
    """The jitted sharded search for one configuration (cached: repeated calls reuse the executable).
    Arguments: train [train_per_device * devices, D] sharded, queries [Q, D] replicated, n_train: the number of
    real training rows (a traced scalar: rows beyond it are padding, so folds of different sizes share one
    program)."""
    num_devices = mesh.devices.size
    n_local = plan.train_per_device
    dist_dtype = _dist_dtype(mode)

    def per_device(train_shard, queries, n_train):
        device = lax.axis_index(_MESH_AXIS)
        offset = device * n_local
        n_valid = jnp.clip(n_train - offset, 0, n_local)
        d, i = _local_nearest(
            train_shard, queries, n_valid, offset, k=k, metric=metric, mode=mode, plan=plan, platform=platform
        )
        if num_devices == 1:
            return d, i
        all_d = lax.all_gather(d, _MESH_AXIS, axis=1, tiled=True)  # [Q, devices * k], device (= index) order
        all_i = lax.all_gather(i, _MESH_AXIS, axis=1, tiled=True)
        neg, pos = lax.top_k(-all_d, k)
        return -neg, jnp.take_along_axis(all_i, pos, axis=1)

    search = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(_MESH_AXIS, None), P(), P()), out_specs=(P(), P()), check_vma=False
    )

    def finish(train, queries, n_train):
        key, i = search(train, queries, n_train)
        d = _from_key(key, dist_dtype)
        if metric == "l2":
            d = jnp.sqrt(d.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32))
        return d, i

    replicated = NamedSharding(mesh, P())
    return jax.jit(finish, out_shardings=(replicated, replicated))


def default_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    return jax.make_mesh((len(devices),), (_MESH_AXIS,), devices=devices)


def _place_train(train2d, mesh, n_padded: int):
    """The training set as a global array [n_padded, D] split over the mesh; rows beyond the data are zeros.
    Built per shard from the host copy (every process holds the full array), so it works multi-host too."""
    sharding = NamedSharding(mesh, P(_MESH_AXIS, None))
    n, dim = train2d.shape
    if isinstance(train2d, jax.Array) and n == n_padded and train2d.sharding.is_equivalent_to(sharding, 2):
        return train2d
    if isinstance(train2d, jax.Array) and not train2d.is_fully_addressable:
        raise ValueError("A multi-host training array must already be sharded over the mesh axis 'data'.")
    host = np.asarray(train2d)

    def shard(index):
        rows = index[0]
        start, stop = rows.start or 0, n_padded if rows.stop is None else rows.stop
        part = host[start:min(stop, n)]
        if stop > n:
            part = np.concatenate([part, np.zeros((stop - max(start, n), dim), host.dtype)])
        return part

    return jax.make_array_from_callback((n_padded, dim), sharding, shard)


def _place_queries(queries2d, mesh):
    sharding = NamedSharding(mesh, P())
    if isinstance(queries2d, jax.Array) and queries2d.sharding.is_equivalent_to(sharding, 2):
        return queries2d
    host = np.asarray(queries2d)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _prepare(train_x, queries, k, metric, mesh, query_block=None, train_block=None,
             memory_budget_bytes=DEFAULT_MEMORY_BUDGET_BYTES, *, n_train=None, n_queries=None):
    """Checks the inputs, picks the arithmetic (mode) and the block plan (for n_train training rows and
    n_queries queries when they differ from the arrays' sizes, as for padded cross-validation folds)."""
    _check_metric(metric)
    train2d, train_shape = _as_2d(train_x, "train_x")
    queries2d, query_shape = _as_2d(queries, "queries")
    if math.prod(train_shape) != math.prod(query_shape):
        raise ValueError(
            f"queries have {math.prod(query_shape)} features (shape {query_shape}) but the training points have "
            f"{math.prod(train_shape)} (shape {train_shape}); they must match."
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {k!r}.")
    n_train = train2d.shape[0] if n_train is None else n_train
    n_queries = queries2d.shape[0] if n_queries is None else n_queries
    if not 1 <= k <= n_train:
        raise ValueError(f"k must be between 1 and the number of training points ({n_train}), got k={k}.")
    _check_finite(train2d, "train_x")
    _check_finite(queries2d, "queries")
    mode = _mode_for(train2d, queries2d, metric)
    mesh = mesh if mesh is not None else default_mesh()
    if _MESH_AXIS not in mesh.axis_names or len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be 1-D with axis name {_MESH_AXIS!r} (see default_mesh), got {mesh.axis_names}.")
    num_devices = mesh.devices.size
    plan = block_plan(
        n_train,
        n_queries,
        train2d.shape[1],
        k=k,
        metric=metric,
        mode=mode.kind,
        num_devices=num_devices,
        query_block=query_block,
        train_block=train_block,
        memory_budget_bytes=memory_budget_bytes,
    )
    return train2d, queries2d, mode, mesh, plan


def nearest(
    train_x,
    queries,
    *,
    k: int,
    metric: str = "l2",
    mesh: jax.sharding.Mesh | None = None,
    query_block: int | None = None,
    train_block: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
):
    """The exact k nearest training points of every query.

    Args:
      train_x: [N, ...] training points (images are flattened), any integer, bool or float dtype.
      queries: [Q, ...] query points with the same number of features.
      k: neighbours per query, 1 <= k <= N.
      metric: "l1" (sum of absolute differences) or "l2" (Euclidean distance).
      mesh: 1-D mesh with axis "data" the training set is split over (default: all devices, ``default_mesh``).
      query_block, train_block: tile shape (default: chosen by ``block_plan``).
      memory_budget_bytes: working memory per device beyond the inputs that the blocks must fit.

    Returns:
      (distances [Q, k], indices [Q, k] int32) sorted by distance, equal distances by the lower training index.
      L1 distances of integer inputs are int32 (exact); L2 distances are the Euclidean distance in float32
      (the square root of the exact integer squared distance for integer inputs; float64 under x64).
    """
    train2d, queries2d, mode, mesh, plan = _prepare(
        train_x, queries, k, metric, mesh, query_block, train_block, memory_budget_bytes
    )
    return _run_search(train2d, queries2d, train2d.shape[0], k=k, metric=metric, mode=mode, mesh=mesh, plan=plan)


def _run_search(train2d, queries2d, n_train: int, *, k, metric, mode, mesh, plan):
    """Runs the compiled search on host or device arrays; rows of train2d from n_train on are ignored."""
    search = _compiled_search(mesh, int(k), metric, mode, plan, mesh.devices.flat[0].platform)
    train_global = _place_train(train2d, mesh, plan.train_per_device * plan.num_devices)
    queries_global = _place_queries(queries2d, mesh)
    n_global = jax.device_put(np.int32(n_train), NamedSharding(mesh, P()))
    return search(train_global, queries_global, n_global)


def lowered_search(
    train_shape: tuple[int, int],
    train_dtype,
    query_shape: tuple[int, int],
    query_dtype=None,
    *,
    k: int,
    metric: str = "l2",
    mesh: jax.sharding.Mesh | None = None,
    query_block: int | None = None,
    train_block: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
):
    """The search for abstract inputs, lowered but not run: ``.compile().memory_analysis()`` gives its memory
    without allocating the data (how the tests check that a CIFAR-size problem fits its budget).
    Integer dtypes are assumed to be 8-bit images (the exact small-integer path). Returns (lowered, plan)."""
    query_dtype = train_dtype if query_dtype is None else query_dtype
    mesh = mesh if mesh is not None else default_mesh()
    _check_metric(metric)
    floating = jnp.issubdtype(train_dtype, jnp.floating) or jnp.issubdtype(query_dtype, jnp.floating)
    mode = _Mode("float") if floating else _Mode("small_int", offset=0)
    plan = block_plan(
        train_shape[0], query_shape[0], train_shape[1], k=k, metric=metric, mode=mode.kind,
        num_devices=mesh.devices.size, query_block=query_block, train_block=train_block,
        memory_budget_bytes=memory_budget_bytes,
    )
    search = _compiled_search(mesh, int(k), metric, mode, plan, mesh.devices.flat[0].platform)
    n_padded = plan.train_per_device * plan.num_devices
    train = jax.ShapeDtypeStruct((n_padded, train_shape[1]), train_dtype, sharding=NamedSharding(mesh, P(_MESH_AXIS, None)))
    q = jax.ShapeDtypeStruct(tuple(query_shape), query_dtype, sharding=NamedSharding(mesh, P()))
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
    return search.lower(train, q, n), plan


# ----------------------------------------------------------------------------------------------------------
# Voting, prediction, cross-validation
# ----------------------------------------------------------------------------------------------------------


def _check_labels(train_y, n_train: int) -> np.ndarray:
    labels = np.asarray(train_y)
    if labels.ndim != 1 or labels.shape[0] != n_train:
        raise ValueError(f"train_y must have shape [{n_train}] (one label per training point), got {labels.shape}.")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise TypeError(
            f"train_y must hold integer class labels, got dtype {labels.dtype}; convert with astype(np.int32) "
            "(or encode string labels with np.unique(..., return_inverse=True))."
        )
    return labels


def vote(neighbour_labels, num_classes: int, *, tie_break: str = "nearest"):
    """Majority vote over neighbour labels [Q, k] in 0..num_classes-1, ordered nearest first.

    tie_break "smallest_label": the smallest tied label (scikit-learn's rule); "nearest": the tied class whose
    closest member comes first in the list. Returns labels [Q] int32.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"Unknown tie_break {tie_break!r}; known: {list(TIE_BREAKS)}.")
    neighbour_labels = jnp.asarray(neighbour_labels, jnp.int32)
    counts = jnp.sum(jax.nn.one_hot(neighbour_labels, num_classes, dtype=jnp.int32), axis=1)  # [Q, C]
    if tie_break == "smallest_label":
        return jnp.argmax(counts, axis=1).astype(jnp.int32)
    top = jnp.max(counts, axis=1, keepdims=True)
    tied = jnp.take_along_axis(counts, neighbour_labels, axis=1) == top  # [Q, k]: neighbour's class is tied
    first = jnp.argmax(tied, axis=1)
    return jnp.take_along_axis(neighbour_labels, first[:, None], axis=1)[:, 0]


def predict(
    train_x,
    train_y,
    queries,
    *,
    k: int,
    metric: str = "l2",
    tie_break: str = "nearest",
    **search_options,
):
    """Majority label of the k nearest training points of every query.

    Args: as ``nearest`` plus train_y [N] integer labels and ``tie_break`` ("nearest" or "smallest_label",
    see ``vote``; with "smallest_label" predictions equal scikit-learn's KNeighborsClassifier(algorithm="brute")).
    Returns: labels [Q] as a numpy array of train_y's dtype.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"Unknown tie_break {tie_break!r}; known: {list(TIE_BREAKS)}.")
    n_train = np.shape(train_x)[0] if np.ndim(train_x) else 0
    labels = _check_labels(train_y, n_train)
    classes, encoded = np.unique(labels, return_inverse=True)
    _, indices = nearest(train_x, queries, k=k, metric=metric, **search_options)
    neighbour_labels = jnp.asarray(encoded.astype(np.int32))[indices]
    return classes[np.asarray(vote(neighbour_labels, len(classes), tie_break=tie_break))]


def fold_indices(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """A seeded shuffled split of range(n) into ``folds`` disjoint parts of sizes differing by at most one."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an integer between 2 and the number of training points ({n}), got {folds}.")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


@dataclasses.dataclass
class CrossValidation:
    """Accuracies of k-fold cross-validation.

    accuracy: [len(ks), len(metrics), folds] fraction correct on each held-out fold.
    mean, std: [len(ks), len(metrics)] over folds (std with ddof=0).
    best_k, best_metric, best_accuracy: the pair with the highest mean (ties: smaller k, then metric order).
    """

    ks: list[int]
    metrics: list[str]
    folds: int
    seed: int
    accuracy: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    best_k: int
    best_metric: str
    best_accuracy: float

    def to_dict(self) -> dict:
        return {
            "ks": list(self.ks),
            "metrics": list(self.metrics),
            "folds": self.folds,
            "seed": self.seed,
            "accuracy": self.accuracy.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "best": {"k": self.best_k, "metric": self.best_metric, "mean_accuracy": self.best_accuracy},
        }


def cross_validate(
    train_x,
    train_y,
    *,
    ks: Sequence[int],
    metrics: Sequence[str] = METRICS,
    folds: int = 5,
    seed: int = 0,
    tie_break: str = "nearest",
    **search_options,
) -> CrossValidation:
    """n-fold cross-validation of k and the metric.

    For each fold and metric the neighbours are searched once, for the largest k; every smaller k votes over
    a prefix of that list (the k nearest are the first k of the max(ks) nearest), so the cost is
    folds x metrics searches whatever the number of ks.
    """
    train2d, _ = _as_2d(train_x, "train_x")
    n = train2d.shape[0]
    labels = _check_labels(train_y, n)
    ks = [int(k) for k in ks]
    metrics = [_check_metric(m) for m in metrics]
    if not ks or not metrics:
        raise ValueError("ks and metrics must each name at least one value.")
    parts = fold_indices(n, folds, seed)
    smallest_train = n - max(len(p) for p in parts)
    if min(ks) < 1 or max(ks) > smallest_train:
        raise ValueError(f"every k must be between 1 and the training fold size ({smallest_train}), got {ks}.")
    classes, encoded = np.unique(labels, return_inverse=True)
    encoded = encoded.astype(np.int32)
    host = np.asarray(train2d) if not isinstance(train2d, np.ndarray) else train2d
    accuracy = np.zeros((len(ks), len(metrics), folds))
    k_max = max(ks)
    # Every fold's training rows and held-out rows are padded to common sizes (training padding is ignored
    # through n_train, held-out padding repeats a row and is dropped), so each metric compiles one program.
    n_fold_train = n - min(len(p) for p in parts)
    n_held_out = max(len(p) for p in parts)
    options = dict(search_options)
    mesh = options.pop("mesh", None) or default_mesh()
    for m, metric in enumerate(metrics):
        _, _, mode, mesh, plan = _prepare(host, host, k_max, metric, mesh, n_train=n_fold_train,
                                          n_queries=n_held_out, **options)
        for f, held_out in enumerate(parts):
            keep = np.ones(n, bool)
            keep[held_out] = False
            fold_x = np.zeros((n_fold_train, host.shape[1]), host.dtype)
            fold_x[: n - len(held_out)] = host[keep]
            fold_y = encoded[keep]
            val_x = host[np.concatenate([held_out, np.repeat(held_out[-1:], n_held_out - len(held_out))])]
            _, idx = _run_search(fold_x, val_x, n - len(held_out), k=k_max, metric=metric, mode=mode, mesh=mesh,
                                 plan=plan)
            neighbour_labels = jnp.asarray(fold_y)[idx[: len(held_out)]]
            for j, k in enumerate(ks):
                predicted = np.asarray(vote(neighbour_labels[:, :k], len(classes), tie_break=tie_break))
                accuracy[j, m, f] = float(np.mean(predicted == encoded[held_out]))
    mean, std = accuracy.mean(axis=2), accuracy.std(axis=2)
    order = [(-mean[j, m], ks[j], m) for j in range(len(ks)) for m in range(len(metrics))]
    _, best_k, best_m = min(order)
    return CrossValidation(
        ks=ks, metrics=metrics, folds=folds, seed=seed, accuracy=accuracy, mean=mean, std=std,
        best_k=best_k, best_metric=metrics[best_m], best_accuracy=float(mean[ks.index(best_k), best_m]),
    )
