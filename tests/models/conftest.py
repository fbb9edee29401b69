"""Shared, cached shape-only tracing of models (jax.eval_shape: no FLOPs, no memory) for the model tests."""

import functools

import jax
import jax.numpy as jnp
import pytest

from cnnlab import models


@functools.lru_cache(maxsize=None)
def _trace(name, shape, num_classes, overrides):
    model = models.get(name, num_classes=num_classes, **dict(overrides))
    return jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros(shape, jnp.float32), train=False,
                                       mutable=["params", "batch_stats", "intermediates"]))


@pytest.fixture(scope="session")
def trace():
    """trace(name, shape, num_classes=10, **overrides) -> (logits ShapeDtypeStruct, variables of shapes).

    variables holds "params", "batch_stats" (empty dict for models without batch norm) and "intermediates".
    Results are cached, so tests that look at the same model and input share one trace.
    """

    def run(name, shape, num_classes=10, **overrides):
        logits, variables = _trace(name, tuple(shape), num_classes, tuple(sorted(overrides.items())))
        return logits, {"batch_stats": {}, **variables}

    return run
