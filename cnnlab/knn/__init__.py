"""Exact k-nearest neighbours: blocked, sharded search with exact arithmetic; vote; cross-validation; regions.

The lecture's first classifier: a query gets the majority label of its k nearest training points under the L1
distance (sum of absolute differences) or L2 (Euclidean distance).

    distances, indices = nearest(train_x, queries, k=10, metric="l2")        # [Q, k] each, sorted
    labels = predict(train_x, train_y, queries, k=5, metric="l1")           # [Q]
    index = Index(train_x, train_y)                                          # placed on the devices once
    labels = index.predict(queries, k=5, metric="l1")                        # many batches, no re-copy
    cv = cross_validate(train_x, train_y, ks=(1, 3, 5), metrics=("l1", "l2"))
    regions = decision_regions(train_x, train_y, k=5, metric="l1", tie_break="nearest")   # PCA plane

Modules: ``search`` (checks, exact arithmetic, block plan, kernels, streaming top-k, placement, ``nearest``),
``index`` (``Index``), ``vote`` (``vote``, ``predict``), ``cv`` (cross-validation), ``regions`` (2-D decision
regions). See docs/knn.md.
"""

from cnnlab.knn.cv import CrossValidation, cross_validate, fold_indices
from cnnlab.knn.index import Index
from cnnlab.knn.regions import DecisionRegions, decision_grid, decision_regions, toy_2d_dataset
from cnnlab.knn.search import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    METRICS,
    BlockPlan,
    block_plan,
    cpu_flags,
    cpu_has_native_fp16,
    l1_tile_dtype,
    l2_operand_dtype,
    lowered_search,
    nearest,
)
from cnnlab.knn.vote import TIE_BREAKS, predict, vote

__all__ = [
    "BlockPlan",
    "CrossValidation",
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "DecisionRegions",
    "Index",
    "METRICS",
    "TIE_BREAKS",
    "block_plan",
    "cpu_flags",
    "cpu_has_native_fp16",
    "cross_validate",
    "decision_grid",
    "decision_regions",
    "fold_indices",
    "l1_tile_dtype",
    "l2_operand_dtype",
    "lowered_search",
    "nearest",
    "predict",
    "toy_2d_dataset",
    "vote",
]
