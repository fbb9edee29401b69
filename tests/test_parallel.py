"""Mesh, shardings and multi-host switches of cnnlab.parallel (8 simulated CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cnnlab import parallel


def test_data_mesh_over_all_or_some_devices():
    mesh = parallel.make_data_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == jax.device_count() == 8
    one = parallel.make_data_mesh(jax.devices()[:1])
    assert one.devices.size == 1
    with pytest.raises(ValueError, match="at least one device"):
        parallel.make_data_mesh([])


def test_put_host_batch_shards_the_batch_axis():
    mesh = parallel.make_data_mesh()
    batch = {"image": np.arange(16 * 2 * 2, dtype=np.uint8).reshape(16, 2, 2, 1), "label": np.arange(16)}
    out = parallel.put_host_batch(batch, mesh)
    assert out["image"].sharding.spec == P("data")
    assert {shard.data.shape for shard in out["image"].addressable_shards} == {(2, 2, 2, 1)}
    np.testing.assert_array_equal(np.asarray(out["label"]), np.arange(16))
    stacked = parallel.put_host_batch({"label": np.arange(48).reshape(3, 16)}, mesh, leading_unsharded_axes=1)
    assert stacked["label"].sharding.spec == P(None, "data")
    assert {shard.data.shape for shard in stacked["label"].addressable_shards} == {(3, 2)}


def test_batch_divisibility_and_replication():
    mesh = parallel.make_data_mesh()
    parallel.check_batch_divisible(64, mesh)
    with pytest.raises(ValueError, match="batch_size=60 must be a positive multiple of the number of devices"):
        parallel.check_batch_divisible(60, mesh)
    x = jax.device_put(np.ones(3), parallel.replicated(mesh))
    assert x.sharding.is_fully_replicated
    assert parallel.device_description(mesh).startswith("8 x")


def test_multihost_switch_reads_config_and_environment():
    assert not parallel.wants_distributed(None, environ={})
    assert parallel.wants_distributed({"multihost": True}, environ={})
    assert parallel.wants_distributed(None, environ={"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert parallel.maybe_initialize_distributed({"multihost": False}) is False  # single process: no-op
