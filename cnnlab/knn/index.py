"""A kNN index: the training set checked once and placed on the devices once, queried many times.

    index = Index(train_x, train_y, mesh=None)        # checks, value range, copy onto the mesh: once
    for batch in batches:
        labels = index.predict(batch, k=5, metric="l1")             # [Q] numpy, train_y's dtype
        distances, indices = index.nearest(batch, k=10)             # [Q, k] each
    index.num_train, index.feature_shape, index.nbytes, index.classes

Each query batch is only checked for what can be wrong with it (feature count, dtype, finiteness, its value
range against the stored one); batches of one shape reuse one compiled program.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cnnlab.knn.search import DEFAULT_MEMORY_BUDGET_BYTES, PlacedTrainingSet
from cnnlab.knn.vote import check_labels, check_tie_break, encode_labels, majority_labels


class Index(PlacedTrainingSet):
    """Exact kNN over a training set placed on a 1-D ``"data"`` mesh once (see ``PlacedTrainingSet``).

    Args:
      train_x: [N, ...] training points, any integer, bool or float dtype (images are flattened).
      train_y: [N] integer labels (any values; encoded with np.unique), or None for a search-only index.
      mesh: 1-D mesh with axis "data" (default: ``cnnlab.parallel.make_data_mesh()``, all devices).
      memory_budget_bytes: working memory per device beyond the inputs that each search's blocks must fit.

    Attributes: num_train, feature_shape, dim, nbytes (bytes of the training set on the devices, one copy),
    classes ([C] sorted distinct labels, or None without train_y), mesh.
    """

    def __init__(self, train_x, train_y=None, *, mesh: jax.sharding.Mesh | None = None,
                 memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES):
        labels = None
        if train_y is not None:  # checked before the training set is copied onto the devices
            labels = check_labels(train_y, np.shape(train_x)[0] if np.ndim(train_x) else 0)
        super().__init__(train_x, mesh=mesh, memory_budget_bytes=memory_budget_bytes)
        self.classes = None
        self._encoded_labels = None
        if labels is not None:
            self.classes, encoded = encode_labels(labels)
            self._encoded_labels = jax.device_put(encoded, NamedSharding(self.mesh, P()))

    def predict(self, queries, *, k: int, metric: str = "l2", tie_break: str = "nearest",
                query_block: int | None = None, train_block: int | None = None) -> np.ndarray:
        """Majority label of the k nearest training points of every query: labels [Q] as a numpy array of
        train_y's dtype. tie_break: "nearest" or "smallest_label" (see ``vote``)."""
        check_tie_break(tie_break)
        if self.classes is None:
            raise ValueError("This Index has no labels: build it as Index(train_x, train_y) to predict, or use "
                             "index.nearest(...) for neighbours only.")
        _, indices = self.nearest(queries, k=k, metric=metric, query_block=query_block, train_block=train_block)
        return majority_labels(indices, self._encoded_labels, self.classes, tie_break)
