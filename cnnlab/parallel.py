"""Devices, meshes and shardings for data-parallel training, and multi-host start-up.

Data parallelism here is plain ``jax.jit`` over ``NamedSharding``s of a one-axis mesh (no pmap): parameters and
optimizer state are replicated on every device, batches are split along their leading (batch) axis over the mesh
axis ``"data"``. XLA inserts the gradient all-reduce. The same program runs on 1 CPU, 8 simulated CPU devices,
one GPU or many hosts.

Multi-host: every process runs the same command; ``maybe_initialize_distributed`` calls
``jax.distributed.initialize`` first (before any other JAX call), when ``config.multihost`` is true or the
environment names a coordinator (``JAX_COORDINATOR_ADDRESS``, or a cluster JAX detects on its own such as SLURM
or Cloud TPU with ``config.multihost=True``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that ask for a multi-process run (read by jax.distributed.initialize too).
_COORDINATOR_ENV = ("JAX_COORDINATOR_ADDRESS",)


def wants_distributed(config=None, environ=None) -> bool:
    """True when ``config.multihost`` is set or the environment names a JAX coordinator address."""
    environ = os.environ if environ is None else environ
    if config is not None and bool(config.get("multihost", False)):
        return True
    return any(environ.get(name) for name in _COORDINATOR_ENV)


def maybe_initialize_distributed(config=None) -> bool:
    """Calls ``jax.distributed.initialize()`` once when a multi-host run is asked for; returns whether it did.

    Coordinator address, process count and id come from the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) or from cluster auto-detection (SLURM, Cloud TPU, ...).
    Must run before the first use of ``jax.devices()`` in the process.
    """
    if not wants_distributed(config):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
        if os.environ.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if os.environ.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    return True


def make_data_mesh(devices: Sequence[jax.Device] | None = None, axis: str = DATA_AXIS) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process) named ``axis``."""
    # Auto axis: shardings are placement hints and XLA propagates them (jax.make_mesh's default became
    # Explicit sharding-in-types, under which vmapped per-example code over a sharded batch must annotate it).
    if devices is None:
        return jax.make_mesh((jax.device_count(),), (axis,), axis_types=(AxisType.Auto,))
    devices = list(devices)
    if not devices:
        raise ValueError("make_data_mesh needs at least one device.")
    return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy of an array on every device of ``mesh`` (parameters, optimizer state)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, axis: str = DATA_AXIS, *, leading_unsharded_axes: int = 0) -> NamedSharding:
    """Sharding that splits an array's batch axis over ``axis``.

    ``leading_unsharded_axes=1`` is for stacks of batches ``[steps, batch, ...]``: the step axis stays whole.
    """
    return NamedSharding(mesh, P(*([None] * leading_unsharded_axes), axis))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises a ValueError unless the global ``batch_size`` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        raise ValueError(
            f"{what}={batch_size} must be a positive multiple of the number of devices ({n}): "
            f"choose e.g. {max(n, (max(batch_size, 1) // n) * n)}."
        )


def put_host_batch(batch: dict[str, np.ndarray], mesh: Mesh, *, leading_unsharded_axes: int = 0,
                   axis: str = DATA_AXIS) -> dict[str, jax.Array]:
    """Turns this process's host rows of a global batch into global ``jax.Array``s sharded on the batch axis.

    ``batch`` holds numpy arrays whose batch axis (axis ``leading_unsharded_axes``) is this process's slice of the
    global batch; with one process that is the whole batch. One process: one batched ``device_put`` of the whole
    dict (147 -> 88 us per LeNet-5 batch); several: one ``make_array_from_process_local_data`` per array.
    """
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh has no axis {axis!r}; its axes are {mesh.axis_names}.")
    sharding = batch_sharded(mesh, axis, leading_unsharded_axes=leading_unsharded_axes)
    batch = {name: np.asarray(value) for name, value in batch.items()}
    for name, value in batch.items():
        global_rows = value.shape[leading_unsharded_axes] * jax.process_count()
        if global_rows % mesh.shape[axis]:
            raise ValueError(f"{name}: a global batch of {global_rows} rows does not split evenly over the "
                             f"{mesh.shape[axis]} devices of mesh axis {axis!r}.")
    if jax.process_count() == 1:  # the whole global batch is here
        return jax.device_put(batch, sharding)
    out = {}
    for name, value in batch.items():
        global_shape = list(value.shape)
        global_shape[leading_unsharded_axes] *= jax.process_count()
        out[name] = jax.make_array_from_process_local_data(sharding, value, tuple(global_shape))
    return out


def device_description(mesh: Mesh | None = None) -> str:
    """A short description of the devices a run uses (``mesh``'s, default all), e.g. ``'8 x cpu (cpu), 1 process'``."""
    devices = list(mesh.devices.flat) if mesh is not None else jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (f"{len(devices)} x {'/'.join(kinds)} ({devices[0].platform}), "
            f"{jax.process_count()} process{'es' if jax.process_count() > 1 else ''}")
