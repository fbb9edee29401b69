"""Exact k-nearest-neighbour search: input checks, exact arithmetic, blocks, kernels, streaming top-k, sharding.

    distances, indices = nearest(train_x, queries, k=10, metric="l2")        # [Q, k] each, sorted
    index = Index(train_x)                                                   # checked and placed once
    distances, indices = index.nearest(queries, k=10, metric="l1")           # many batches, no re-copy

How it works (one jitted program):
  * The training set is split over a 1-D device mesh (axis ``"data"``, ``cnnlab.parallel.make_data_mesh``);
    every device owns a contiguous slice.
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
      L2: values are centred to [-128, 127]. On CPU they are int8 and the matrix product accumulates in int32
          (|q.x| <= D * 2^14: exact; XLA:CPU runs it through YNNPACK's int8 kernels: AMX or AVX512-VNNI where
          present, AVX2 elsewhere), then |q|^2 - 2 q.x + |x|^2 in int32 (from 32,768 features on, where that could
          overflow, the chunked float32 product below). On GPU/TPU the operands are bfloat16
          with float32 accumulation over feature chunks of at most 1024 features (|sum| <= 1024 * 128^2 = 2^24,
          so every partial sum is an exactly representable integer), converted to int32 and combined the same way.
      L1: the tile type follows the CPU (``l1_tile_dtype``). float16 where it is native (AVX512-FP16 CPUs,
          GPUs): |a - b| of values in [0, 255] and sums of 8 such terms (<= 2040 < 2^11) are exact, the chunk sums
          are added in float32 (exact below 2^24). uint8 elsewhere (AVX2 CPUs): |a - b| = max(a, b) - min(a, b)
          stays a byte, sums of 16 (<= 4080) are taken in uint16 and the chunk sums in int32.
  * Other integer inputs: direct integer differences accumulated in int32 (int64 with jax_enable_x64); a
    range whose worst-case distance does not fit raises a ValueError instead of silently rounding.
  * Float inputs follow float semantics: L2 by the same matrix-product expansion in float32 (HIGHEST
    precision, clamped at 0), L1 by direct differences.

Input checks happen at the public entry points (``nearest``, ``Index``, ``Index.nearest``, ``block_plan``,
``lowered_search``); the ``check_*`` helpers are public so that ``cv`` and ``index`` share them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from cnnlab.parallel import DATA_AXIS, make_data_mesh

METRICS = ("l1", "l2")
DEFAULT_MEMORY_BUDGET_BYTES = 1 << 30  # 1 GiB of working memory per device beyond inputs
_GROUP = 16  # columns per group in the group-minimum top-k pre-filter
_L1_MICRO_QUERIES = 16  # micro-tile of the L1 kernel (measured best on AVX512 CPUs: 16 x 256..1024)
_L1_MICRO_TRAIN = 256
_L1_CHUNK = 8  # features summed in float16: 8 * 255 = 2040 < 2048, exact
_L1_U8_CHUNK = 16  # byte differences summed in uint16 (16 * 255 = 4080); measured best of 8..112 on 2 CPUs
_L2_CHUNK_LIMIT = 1 << 24  # float32 represents every integer up to 2^24 exactly


# ----------------------------------------------------------------------------------------------------------
# Input checking and the exact-arithmetic mode
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArithmeticMode:
    """How distances are computed: 'small_int' (span <= 255, exact fast paths), 'int' (exact, direct
    differences in ``int_dtype``) or 'float'. ``offset`` is subtracted from integer values first. Part of the
    compiled program's cache key: batches with the same mode share one executable."""

    kind: str
    offset: int = 0
    int_dtype: Any = None


@dataclasses.dataclass(frozen=True)
class ValueRange:
    """dtype and [low, high] value bounds of one array: what ``arithmetic_mode`` needs to know of it."""

    dtype: np.dtype
    low: float
    high: float


def value_range(x) -> ValueRange:
    """dtype and (min, max) of ``x``: one scan, on the host (numpy) or on the devices (jax arrays)."""
    if isinstance(x, np.ndarray):
        low, high = x.min(), x.max()
    else:
        low, high = jnp.min(x), jnp.max(x)
    return ValueRange(np.dtype(x.dtype), float(low), float(high))


def check_points(x, name: str) -> tuple[Any, tuple[int, ...]]:
    """Checks that ``x`` is [N, features...] with N >= 1, at least one feature and a real, integer or bool
    dtype. Returns (x as [N, D], the feature shape). numpy and jax arrays are kept as they are (no copy)."""
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


def check_finite(x, name: str) -> None:
    """Raises a ValueError when a float array holds NaN or +-inf (integer arrays pass without a scan)."""
    dtype = np.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        return
    finite = np.isfinite(x).all() if isinstance(x, np.ndarray) else bool(jnp.isfinite(x).all())
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values; remove or impute them before kNN.")


def check_metric(metric: str) -> str:
    """Returns ``metric`` if it is one of ``METRICS``; raises a ValueError naming the known ones otherwise."""
    if metric not in METRICS:
        raise ValueError(f"Unknown metric {metric!r}; known metrics: {list(METRICS)}.")
    return metric


def check_k(k, n_train: int) -> int:
    """Returns ``k`` as an int if it is an integer (not bool) in [1, n_train]; raises TypeError/ValueError."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {k!r}.")
    if not 1 <= k <= n_train:
        raise ValueError(f"k must be between 1 and the number of training points ({n_train}), got k={k}.")
    return int(k)


def check_same_features(train_shape: tuple[int, ...], query_shape: tuple[int, ...]) -> None:
    """Raises a ValueError unless both feature shapes hold the same number of features (shapes may differ)."""
    if math.prod(train_shape) != math.prod(query_shape):
        raise ValueError(
            f"queries have {math.prod(query_shape)} features (shape {query_shape}) but the training points have "
            f"{math.prod(train_shape)} (shape {train_shape}); they must match."
        )


def check_mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh:
    """``mesh`` if it is a 1-D mesh with axis ``"data"``; None gives ``make_data_mesh()`` (all devices)."""
    mesh = mesh if mesh is not None else make_data_mesh()
    if DATA_AXIS not in mesh.axis_names or len(mesh.axis_names) != 1:
        raise ValueError(
            f"mesh must be 1-D with axis name {DATA_AXIS!r} (see cnnlab.parallel.make_data_mesh), got "
            f"{mesh.axis_names}."
        )
    return mesh


def arithmetic_mode(train: ValueRange, queries: ValueRange, dim: int, metric: str) -> ArithmeticMode:
    """Chooses the exact arithmetic for the dtypes and the joint value range of training points and queries
    (host-side, before jit). Queries inside the training set's range give the training set's mode, so they
    share its compiled program; a range whose worst-case distance cannot be represented raises a ValueError."""
    dtypes = [train.dtype, queries.dtype]
    if any(jnp.issubdtype(d, jnp.floating) for d in dtypes):
        largest = max(abs(v) for v in (train.low, train.high, queries.low, queries.high))
        float_max = float(jnp.finfo(_dist_dtype(ArithmeticMode("float"))).max)
        if dim * (2 * largest) ** 2 >= float_max:
            raise ValueError(
                f"Float inputs as large as {largest:g} can overflow the {metric} distance over {dim} features; "
                "rescale the data (e.g. to [0, 1])."
            )
        return ArithmeticMode("float")
    if all(d in (np.dtype(np.uint8), np.dtype(np.bool_)) for d in dtypes):
        lo, hi = 0, 255
    else:
        lo, hi = int(min(train.low, queries.low)), int(max(train.high, queries.high))
    span = hi - lo
    worst = dim * (span if metric == "l1" else span * span)
    if worst < _KEY_LIMIT[4]:
        if span <= 255:
            return ArithmeticMode("small_int", offset=lo)
        return ArithmeticMode("int", offset=lo, int_dtype=jnp.int32)
    if jax.config.jax_enable_x64 and worst < _KEY_LIMIT[8]:
        return ArithmeticMode("int", offset=lo, int_dtype=jnp.int64)
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


def check_block_size(size, name: str) -> int:
    """Returns ``size`` as an int if it is a positive integer (not bool); raises TypeError/ValueError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer or None (the default), got {size!r}.")
    if size < 1:
        raise ValueError(f"{name} must be a positive integer or None for the default block size, got {size}.")
    return int(size)


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
    blocks raises a ValueError. ``query_block``/``train_block``: None for the default, else a positive integer
    (0 or a negative size raises a ValueError rather than silently meaning the default).
    """
    check_metric(metric)
    per_device = -(-n_train // num_devices)
    default_qb, default_tb = (256, 4096) if metric == "l2" and mode != "int" else (64, 2048)
    qb = default_qb if query_block is None else check_block_size(query_block, "query_block")
    tb = default_tb if train_block is None else check_block_size(train_block, "train_block")
    qb = min(qb, n_queries)
    if query_block is None:
        # Equal query blocks (multiples of the L1 micro-tile): the last block is clamped to end at Q, so 300
        # queries in blocks of 256 would compute 512 rows; two blocks of 160 compute 320.
        qb = min(_round_up(-(-n_queries // -(-n_queries // qb)), _L1_MICRO_QUERIES), qb)
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
def cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags as Linux lists them in /proc/cpuinfo (e.g. "avx2", "avx512_fp16"); empty
    where that file is missing (other operating systems): the kernels then take their portable choices."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def xla_cpu_max_isa() -> str | None:
    """The instruction-set ceiling XLA:CPU's code generation was given (``--xla_cpu_max_isa=...`` in XLA_FLAGS,
    e.g. "AVX2"), upper case; None when unset (XLA then uses everything the CPU has)."""
    value = None
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_cpu_max_isa="):
            value = flag.split("=", 1)[1].strip().upper() or None
    return value


def cpu_has_native_fp16() -> bool:
    """Whether XLA:CPU can use native float16 arithmetic here: the CPU has AVX512-FP16 (e.g. Sapphire Rapids)
    and ``--xla_cpu_max_isa`` does not hold code generation below AVX-512. Elsewhere (AVX2-only x86 such as
    many AMD EPYC parts) XLA:CPU emulates float16 through float32 conversions, which makes a float16 L1 tile
    3-4x slower than the uint8 one."""
    ceiling = xla_cpu_max_isa()
    if ceiling is not None and not ceiling.startswith(("AVX512", "AVX10", "AMX")):
        return False
    return "avx512_fp16" in cpu_flags()


def l1_tile_dtype(platform: str):
    """Element type of the exact L1 tile for 8-bit data: float16 where it is native (accelerators, CPUs with
    AVX512-FP16), uint8 on other CPUs. Both are exact. float16: |a - b| of values in [0, 255] and sums of 8 such
    differences (<= 2040) fit its 11-bit significand. uint8: |a - b| = max(a, b) - min(a, b) never leaves
    [0, 255]; sums of 16 of them (<= 4080) are taken in uint16, then in int32. XLA:CPU vectorises the uint8
    form as byte max/min/subtract with a widening add: on AVX2 about 8x the float32 tile's speed and 3x the
    emulated float16 one (docs/knn.md)."""
    if platform != "cpu" or cpu_has_native_fp16():
        return jnp.float16
    return jnp.uint8


def l2_operand_dtype(platform: str):
    """Operand type of the exact L2 matrix product for 8-bit data. int8 on CPU: values centred to [-128, 127],
    the product accumulated in int32 (exact; XLA:CPU hands it to YNNPACK, whose int8 kernels use AMX or
    AVX512-VNNI where present and AVX2 elsewhere: 1.1x float32's speed on AVX2, about 7x on a Sapphire Rapids
    Xeon). bfloat16 with float32 accumulation over <= 1024-feature chunks on accelerators (their matrix
    units; centred 8-bit values and their products are exact there too)."""
    return jnp.int8 if platform == "cpu" else jnp.bfloat16


def _centred(x, mode: ArithmeticMode, dtype):
    """x - offset - 128 (in [-128, 127] for the small-integer mode) as ``dtype``."""
    if x.dtype == jnp.uint8 and mode.offset == 0:
        if dtype == jnp.int8:  # flipping the top bit of a byte subtracts 128: one cheap pass
            return lax.bitcast_convert_type(x ^ jnp.uint8(0x80), jnp.int8)
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


def _kernel_for(metric: str, mode: ArithmeticMode, platform: str, dim: int, dist_dtype) -> _Kernel:
    if metric == "l2" and mode.kind == "small_int" and (
        l2_operand_dtype(platform) == jnp.int8 and dim * 4 * 128 * 128 < 2**31
    ):
        # Exact: centred values in [-128, 127] as int8, the dot product accumulated in int32 (|q.x| <= dim * 2^14);
        # |q|^2 + |x|^2 - 2 q.x stays within dim * 2^16 < 2^31 at every step.

        def prepare(x):
            c = _centred(x, mode, jnp.int8)
            wide = c.astype(jnp.int32)
            return c, jnp.sum(wide * wide, axis=1, dtype=jnp.int32)

        def tile(q, x):
            (qc, qn), (xc, xn) = q, x
            dot = lax.dot_general(qc, xc, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
            return qn[:, None] + xn[None, :] - 2 * dot

        return _Kernel(prepare, prepare, tile)

    if metric == "l2" and mode.kind == "small_int":
        # Exact: centred values in [-128, 127]; float32 accumulation over <= 1024 features stays <= 2^24.
        dtype = jnp.bfloat16 if l2_operand_dtype(platform) == jnp.bfloat16 else jnp.float32
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

    if metric == "l1" and mode.kind == "small_int" and l1_tile_dtype(platform) == jnp.uint8:
        # Exact: values - offset in [0, 255] as uint8; |a - b| = max - min stays a byte; sums of 16 (<= 4080)
        # in uint16, the chunk sums in int32 (dim * 255 < 2^31 is guaranteed by arithmetic_mode).

        def to_u8(x):
            if x.dtype == jnp.uint8 and mode.offset == 0:
                return x
            return (x.astype(jnp.int32) - mode.offset).astype(jnp.uint8)

        def byte_kernel(qq, xx):
            mq, d16 = qq.shape
            a, b = qq[:, :, None], xx[None, :, :]
            diff = jnp.maximum(a, b) - jnp.minimum(a, b)
            chunk_sums = diff.reshape(mq, d16 // _L1_U8_CHUNK, _L1_U8_CHUNK, xx.shape[1]).sum(
                axis=2, dtype=jnp.uint16)
            return chunk_sums.sum(axis=1, dtype=jnp.int32)

        return _Kernel(
            lambda x: _micro_split(_pad_features(to_u8(x).T, _L1_U8_CHUNK, 0), _L1_MICRO_TRAIN),
            lambda q: _pad_features(to_u8(q), _L1_U8_CHUNK, 1),
            lambda q, x: _micro_tiled(byte_kernel, q, x, _L1_MICRO_QUERIES),
        )

    if metric == "l1" and mode.kind == "small_int" and dim * 255 < _L2_CHUNK_LIMIT:
        # Exact: values in [0, 255] and sums of 8 differences (<= 2040) are exact in float16, the float32
        # total of the chunk sums stays below 2^24.
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


def _dist_dtype(mode: ArithmeticMode):
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
def compiled_search(mesh, k: int, metric: str, mode: ArithmeticMode, plan: BlockPlan, platform: str):
    """The jitted sharded search for one configuration (cached: repeated calls reuse the executable).
    Arguments: train [train_per_device * devices, D] sharded, queries [Q, D] replicated, n_train: the number of
    real training rows (a traced scalar: rows beyond it are padding, so folds of different sizes share one
    program)."""
    num_devices = mesh.devices.size
    n_local = plan.train_per_device
    dist_dtype = _dist_dtype(mode)

    def per_device(train_shard, queries, n_train):
        device = lax.axis_index(DATA_AXIS)
        offset = device * n_local
        n_valid = jnp.clip(n_train - offset, 0, n_local)
        d, i = _local_nearest(
            train_shard, queries, n_valid, offset, k=k, metric=metric, mode=mode, plan=plan, platform=platform
        )
        if num_devices == 1:
            return d, i
        all_d = lax.all_gather(d, DATA_AXIS, axis=1, tiled=True)  # [Q, devices * k], device (= index) order
        all_i = lax.all_gather(i, DATA_AXIS, axis=1, tiled=True)
        neg, pos = lax.top_k(-all_d, k)
        return -neg, jnp.take_along_axis(all_i, pos, axis=1)

    search = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(DATA_AXIS, None), P(), P()), out_specs=(P(), P()), check_vma=False
    )

    def finish(train, queries, n_train):
        key, i = search(train, queries, n_train)
        d = _from_key(key, dist_dtype)
        if metric == "l2":
            d = jnp.sqrt(d.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32))
        return d, i

    replicated = NamedSharding(mesh, P())
    return jax.jit(finish, out_shardings=(replicated, replicated))



# ----------------------------------------------------------------------------------------------------------
# Placement on the mesh, the searchable training set, nearest
# ----------------------------------------------------------------------------------------------------------


def padded_train_rows(n_train: int, num_devices: int) -> int:
    """Rows of the placed training array: n_train rounded up to a multiple of the devices (equal slices)."""
    return _round_up(n_train, num_devices)


def place_train(train2d, mesh) -> jax.Array:
    """The training set [N, D] as a global array [padded_train_rows(N, devices), D] split over the mesh axis
    "data"; rows beyond the data are zeros. Built per shard from the host copy (every process holds the full
    array), so it works multi-host too; an array already placed that way is returned as it is (no copy)."""
    sharding = NamedSharding(mesh, P(DATA_AXIS, None))
    n, dim = train2d.shape
    n_padded = padded_train_rows(n, mesh.devices.size)
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


def place_queries(queries2d, mesh) -> jax.Array:
    """The queries [Q, D] as a global array replicated on every device of the mesh."""
    sharding = NamedSharding(mesh, P())
    if isinstance(queries2d, jax.Array) and queries2d.sharding.is_equivalent_to(sharding, 2):
        return queries2d
    host = np.asarray(queries2d)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def run_search(train_placed, queries_placed, num_valid, *, k: int, metric: str, mode: ArithmeticMode,
               mesh, plan: BlockPlan):
    """Runs the compiled search (``compiled_search``, cached per configuration) on placed arrays, unchecked.

    train_placed: ``place_train``'s array; queries_placed: ``place_queries``'s; num_valid: the number of real
    training rows as a replicated int32 scalar array (rows from it on are padding and never returned)."""
    search = compiled_search(mesh, k, metric, mode, plan, mesh.devices.flat[0].platform)
    return search(train_placed, queries_placed, num_valid)


def replicated_count(n: int, mesh) -> jax.Array:
    """``n`` as an int32 scalar replicated on the mesh (``run_search``'s num_valid)."""
    return jax.device_put(np.int32(n), NamedSharding(mesh, P()))


class PlacedTrainingSet:
    """A training set checked once and placed on the mesh once, searched for many query batches.

    The checks (shape, dtype, finiteness), the value range that picks the exact arithmetic, and the copy onto
    the devices happen in the constructor; each ``nearest`` call then only checks and places its queries.
    Query batches of one shape and mode reuse one compiled program (``compiled_search`` is cached per
    (mesh, k, metric, mode, block plan)). ``Index`` adds labels and ``predict`` to it.

    Attributes: num_train (N), feature_shape (one point's shape), dim (features), mesh, memory_budget_bytes,
    nbytes (bytes of the placed training array, one copy, device padding included).
    """

    def __init__(self, train_x, *, mesh: jax.sharding.Mesh | None = None,
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES):
        train2d, self.feature_shape = check_points(train_x, "train_x")
        check_finite(train2d, "train_x")
        self.mesh = check_mesh(mesh)
        self.memory_budget_bytes = memory_budget_bytes
        self.num_train, self.dim = int(train2d.shape[0]), int(train2d.shape[1])
        self.train_range = value_range(train2d)
        self.train_placed = place_train(train2d, self.mesh)
        self._num_valid = replicated_count(self.num_train, self.mesh)

    @property
    def nbytes(self) -> int:
        """Bytes of the training set stored on the devices (one copy of [padded N, D])."""
        return int(self.train_placed.nbytes)

    def nearest(self, queries, *, k: int, metric: str = "l2", query_block: int | None = None,
                train_block: int | None = None):
        """The exact k nearest training points of every query: (distances [Q, k], indices [Q, k] int32), see
        ``nearest``. queries: [Q, ...] with the training set's number of features."""
        check_metric(metric)
        queries2d, query_shape = check_points(queries, "queries")
        check_same_features(self.feature_shape, query_shape)
        k = check_k(k, self.num_train)
        check_finite(queries2d, "queries")
        mode = arithmetic_mode(self.train_range, value_range(queries2d), self.dim, metric)
        plan = block_plan(
            self.num_train, queries2d.shape[0], self.dim, k=k, metric=metric, mode=mode.kind,
            num_devices=self.mesh.devices.size, query_block=query_block, train_block=train_block,
            memory_budget_bytes=self.memory_budget_bytes,
        )
        return run_search(self.train_placed, place_queries(queries2d, self.mesh), self._num_valid, k=k,
                          metric=metric, mode=mode, mesh=self.mesh, plan=plan)


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
    """The exact k nearest training points of every query (one-off; for many query batches against one
    training set use ``Index``, which checks and places the training set once).

    Args:
      train_x: [N, ...] training points (images are flattened), any integer, bool or float dtype.
      queries: [Q, ...] query points with the same number of features.
      k: neighbours per query, 1 <= k <= N.
      metric: "l1" (sum of absolute differences) or "l2" (Euclidean distance).
      mesh: 1-D mesh with axis "data" the training set is split over (default: all devices,
        ``cnnlab.parallel.make_data_mesh()``).
      query_block, train_block: tile shape (default None: chosen by ``block_plan``; else positive integers).
      memory_budget_bytes: working memory per device beyond the inputs that the blocks must fit.

    Returns:
      (distances [Q, k], indices [Q, k] int32) sorted by distance, equal distances by the lower training index.
      L1 distances of integer inputs are int32 (exact); L2 distances are the Euclidean distance in float32
      (the square root of the exact integer squared distance for integer inputs; float64 under x64).
    """
    training_set = PlacedTrainingSet(train_x, mesh=mesh, memory_budget_bytes=memory_budget_bytes)
    return training_set.nearest(queries, k=k, metric=metric, query_block=query_block, train_block=train_block)


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
    mesh = check_mesh(mesh)
    check_metric(metric)
    check_k(k, train_shape[0])
    floating = jnp.issubdtype(train_dtype, jnp.floating) or jnp.issubdtype(query_dtype, jnp.floating)
    mode = ArithmeticMode("float") if floating else ArithmeticMode("small_int", offset=0)
    plan = block_plan(
        train_shape[0], query_shape[0], train_shape[1], k=k, metric=metric, mode=mode.kind,
        num_devices=mesh.devices.size, query_block=query_block, train_block=train_block,
        memory_budget_bytes=memory_budget_bytes,
    )
    search = compiled_search(mesh, int(k), metric, mode, plan, mesh.devices.flat[0].platform)
    n_padded = padded_train_rows(train_shape[0], plan.num_devices)
    train = jax.ShapeDtypeStruct((n_padded, train_shape[1]), train_dtype,
                                 sharding=NamedSharding(mesh, P(DATA_AXIS, None)))
    q = jax.ShapeDtypeStruct(tuple(query_shape), query_dtype, sharding=NamedSharding(mesh, P()))
    n = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
    return search.lower(train, q, n), plan
