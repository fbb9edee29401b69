"""Shared by the kNN tests: a brute-force reference search and a one-device mesh."""

import jax
import numpy as np

from cnnlab.parallel import make_data_mesh


def reference_nearest(train_x, queries, k, metric):
    """Brute force in int64 (integer inputs) or float64: every distance, then a (distance, index) sort."""
    exact_int = np.issubdtype(train_x.dtype, np.integer) or train_x.dtype == np.bool_
    dtype = np.int64 if exact_int else np.float64
    x = train_x.reshape(len(train_x), -1).astype(dtype)
    q = queries.reshape(len(queries), -1).astype(dtype)
    diff = q[:, None, :] - x[None, :, :]
    dist = np.abs(diff).sum(-1) if metric == "l1" else (diff * diff).sum(-1)
    index = np.broadcast_to(np.arange(len(x)), dist.shape)
    order = np.lexsort((index, dist), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, axis=1), order

def one_device_mesh():
    return make_data_mesh(jax.devices()[:1])
