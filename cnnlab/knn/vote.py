"""Majority vote over the k nearest neighbours' labels, and one-off prediction.

    labels = predict(train_x, train_y, queries, k=5, metric="l1")           # [Q], numpy, train_y's dtype
    voted = vote(neighbour_labels, num_classes, tie_break="smallest_label")  # [Q] int32, labels 0..C-1

For many query batches against one training set use ``Index(train_x, train_y).predict(queries, ...)``, which
checks and places the training set once; both share ``majority_labels``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnnlab.knn.search import DEFAULT_MEMORY_BUDGET_BYTES, nearest

TIE_BREAKS = ("nearest", "smallest_label")


def check_tie_break(tie_break: str) -> str:
    """Returns ``tie_break`` if it is one of ``TIE_BREAKS``; raises a ValueError naming the known ones."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"Unknown tie_break {tie_break!r}; known: {list(TIE_BREAKS)}.")
    return tie_break


def check_labels(train_y, n_train: int) -> np.ndarray:
    """Returns train_y as a numpy array after checking it is [n_train] integer (or bool) class labels."""
    labels = np.asarray(train_y)
    if labels.ndim != 1 or labels.shape[0] != n_train:
        raise ValueError(f"train_y must have shape [{n_train}] (one label per training point), got {labels.shape}.")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise TypeError(
            f"train_y must hold integer class labels, got dtype {labels.dtype}; convert with astype(np.int32) "
            "(or encode string labels with np.unique(..., return_inverse=True))."
        )
    return labels


def encode_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes [C] sorted distinct labels, encoded [N] int32 in 0..C-1 with classes[encoded] == labels)."""
    classes, encoded = np.unique(labels, return_inverse=True)
    return classes, encoded.astype(np.int32)


def _check_vote_inputs(neighbour_labels, num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if np.ndim(neighbour_labels) != 2:
        raise ValueError(f"neighbour_labels must be [Q, k], got shape {np.shape(neighbour_labels)}.")
    dtype = np.dtype(neighbour_labels.dtype) if hasattr(neighbour_labels, "dtype") else np.asarray(neighbour_labels).dtype
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise TypeError(f"neighbour_labels must be integer class indices 0..num_classes-1, got dtype {dtype}.")
    if isinstance(neighbour_labels, jax.core.Tracer) or np.size(neighbour_labels) == 0:
        return  # under jit the values are unknown here: out-of-range labels then count for no class
    host = np.asarray(neighbour_labels)
    low, high = host.min(), host.max()
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"neighbour_labels holds the label {int(bad)}, outside the valid range [0, {num_classes}) for "
            f"num_classes={num_classes}; encode labels as 0..num_classes-1 first (e.g. np.unique(labels, "
            "return_inverse=True)) or raise num_classes."
        )


def _vote_counts(neighbour_labels, num_classes: int, tie_break: str):
    """The vote itself (unchecked): labels [Q, k] int32 in 0..num_classes-1 -> [Q] int32."""
    counts = jnp.sum(jax.nn.one_hot(neighbour_labels, num_classes, dtype=jnp.int32), axis=1)  # [Q, C]
    if tie_break == "smallest_label":
        return jnp.argmax(counts, axis=1).astype(jnp.int32)
    top = jnp.max(counts, axis=1, keepdims=True)
    tied = jnp.take_along_axis(counts, neighbour_labels, axis=1) == top  # [Q, k]: neighbour's class is tied
    first = jnp.argmax(tied, axis=1)
    return jnp.take_along_axis(neighbour_labels, first[:, None], axis=1)[:, 0]


def vote(neighbour_labels, num_classes: int, *, tie_break: str = "nearest"):
    """Majority vote over neighbour labels [Q, k] in 0..num_classes-1, ordered nearest first.

    tie_break "smallest_label": the smallest tied label (scikit-learn's rule); "nearest": the tied class whose
    closest member comes first in the list. Returns labels [Q] int32.

    Labels outside [0, num_classes) raise a ValueError naming the bad value when ``neighbour_labels`` is
    concrete (numpy or a jax array outside jit: the check reads it on the host). Inside ``jax.jit`` the values
    cannot be checked: there an out-of-range label counts for no class, so encode labels first.
    """
    check_tie_break(tie_break)
    _check_vote_inputs(neighbour_labels, num_classes)
    return _vote_counts(jnp.asarray(neighbour_labels, jnp.int32), int(num_classes), tie_break)


def majority_labels(indices, encoded_labels, classes: np.ndarray, tie_break: str) -> np.ndarray:
    """Predicted labels [Q] (numpy, ``classes``' dtype) from neighbour indices [Q, k] (nearest first), the
    training set's encoded labels [N] int32 in 0..C-1 (numpy or a jax array) and the classes [C] they encode.
    Inputs are trusted (``encode_labels``' output), so no host check of the labels is needed."""
    neighbour_labels = jnp.asarray(encoded_labels)[indices]
    return classes[np.asarray(_vote_counts(neighbour_labels, len(classes), tie_break))]


def predict(
    train_x,
    train_y,
    queries,
    *,
    k: int,
    metric: str = "l2",
    tie_break: str = "nearest",
    mesh: jax.sharding.Mesh | None = None,
    query_block: int | None = None,
    train_block: int | None = None,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> np.ndarray:
    """Majority label of the k nearest training points of every query (one-off; see ``Index`` for many batches).

    Args: as ``nearest`` plus train_y [N] integer labels (any values: encoded with np.unique) and ``tie_break``
    ("nearest" or "smallest_label", see ``vote``; with "smallest_label" predictions equal scikit-learn's
    KNeighborsClassifier(algorithm="brute")).
    Returns: labels [Q] as a numpy array of train_y's dtype.
    """
    check_tie_break(tie_break)
    labels = check_labels(train_y, np.shape(train_x)[0] if np.ndim(train_x) else 0)
    classes, encoded = encode_labels(labels)
    _, indices = nearest(train_x, queries, k=k, metric=metric, mesh=mesh, query_block=query_block,
                         train_block=train_block, memory_budget_bytes=memory_budget_bytes)
    return majority_labels(indices, encoded, classes, tie_break)
