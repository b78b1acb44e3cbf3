"""Data parallelism for imported graphs, on JAX's own `jax.sharding` (no home-made distribution layer).

The recipe: a one-axis `Mesh` over every device, the batch of each feed split along that axis,
the variables replicated (or a large embedding split along its first axis), and the graph's own
functions under `jax.jit`. XLA partitions the computation and inserts the all-reduce where the graph
averages over the batch (a TF1 loss is a batch mean), so the graph's `train_op` and the
`jax.grad`+optax path both train data-parallel unchanged:

    import jax, jaxmeta
    from jaxmeta import parallel

    g = jaxmeta.import_meta_graph("model.meta")
    mesh = parallel.batch_mesh()                        # every device (of every process)
    variables = parallel.replicate(g.saver.restore("model"), mesh)
    train = jax.jit(g.step(loss, feeds=["images:0", "labels:0"], targets=[train_op]), donate_argnums=0)
    for images, labels in batches:                      # the global batch (one process), or
        images, labels = parallel.shard_batch((images, labels), mesh)   # this process's part of it
        loss_value, variables = train(variables, images, labels)

On a CPU, call `parallel.cpu_devices()` right after `import jax`: XLA's CPU runtime runs most of
one program on a single thread (its products and convolutions use a few), so one CPU device leaves
cores idle that TF1's executor would use; with the CPU split into one device per core, the same
recipe runs each part of the batch on its own core.

Under `jax.distributed.initialize` (many hosts) the same code runs in every process: `batch_mesh()`
spans every process's devices, `shard_batch` takes each process's own part of the global batch, and
`replicate` expects the same values in every process. See docs/devices.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmeta._devices import DevicePlacementError
from jaxmeta._errors import FeedError

__all__ = ["BATCH_AXIS", "batch_mesh", "batch_sharding", "cpu_devices", "replicate", "shard_batch", "shard_variables",
           "to_host"]

BATCH_AXIS = "batch"


def cpu_devices(count: int | None = None) -> int:
    """Splits this process's CPU into `count` JAX devices, so that a batch split over them
    (`batch_mesh`, `replicate`, `shard_batch`) runs on every core.

    JAX starts with one CPU device, and XLA runs most of a program on one thread of it, so a TF1
    model whose TF Session used every core runs on fewer. Measured on 2 cores
    (`benchmarks/run.py`): an unrolled LSTM's batch of 64 ran in 0.65× the time of its best
    one-device form, a `dynamic_rnn` LSTM's in 0.86×; convolutional models gained nothing, and
    training steps ran slower split (the gradients are summed across devices). A program left on
    one device of a split CPU runs a little slower than on an unsplit one (it has fewer threads).

    Call it right after `import jax`, before any JAX operation (JAX's `jax_num_cpu_devices`; the
    environment's `XLA_FLAGS=--xla_force_host_platform_device_count=N` does the same).

    Args:
        count: the number of devices; the cores this process may run on by default.

    Returns:
        The number of CPU devices.

    Raises:
        DevicePlacementError: JAX has already started with another number of CPU devices.
    """
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:  # JAX's backends have started
        have = len(jax.devices("cpu"))
        if have != count:
            raise DevicePlacementError(
                f"cpu_devices({count}): JAX has already started with {have} CPU device(s); call "
                "jaxmeta.parallel.cpu_devices() right after `import jax`, before any JAX operation (or set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={count} before starting Python)"
            ) from None
    return int(count)


def batch_mesh(devices: Sequence[Any] | None = None, axis_name: str = BATCH_AXIS) -> Mesh:
    """A one-axis mesh for data parallelism.

    Args:
        devices: the devices, in order; `jax.devices()` (every process's devices) by default.
        axis_name: the mesh axis the batch is split over.
    """
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
    """A sharding that splits dimension `batch_axis` of an `ndim`-dimensional array over the mesh."""
    if not -ndim <= batch_axis < ndim:
        raise FeedError(f"batch_axis {batch_axis} is out of range for a {ndim}-dimensional feed")
    spec = [None] * ndim
    spec[batch_axis % ndim] = mesh.axis_names[0]
    return NamedSharding(mesh, PartitionSpec(*spec))


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Splits every array of a pytree along `batch_axis` over the mesh (the feeds of a step).

    With one process, each leaf is the global batch. With several (`jax.distributed`), each process
    passes its own consecutive part and the global batch is their concatenation in process order.

    Raises:
        FeedError: when a batch does not divide evenly over the devices (pad it or drop the rest).
    """
    n = mesh.devices.size // jax.process_count()

    def shard(x):
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        if x.ndim == 0:
            raise FeedError("shard_batch got a scalar; pass scalars (learning rates, flags) unsharded")
        size = x.shape[batch_axis]
        if size % n:
            raise FeedError(
                f"a batch of {size} does not split over {n} devices{' per process' if jax.process_count() > 1 else ''}; "
                "use a multiple of the device count (pad the last batch, or drop it)"
            )
        sharding = batch_sharding(mesh, x.ndim, batch_axis)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree_util.tree_map(shard, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A copy of every array of a pytree (e.g. the variables dict) on every device of the mesh.

    String variables (NumPy object arrays) stay on the host. With several processes, every process
    must pass the same values.
    """
    return jax.tree_util.tree_map(lambda x: _put(x, NamedSharding(mesh, PartitionSpec())), tree)


def shard_variables(
    variables: Mapping[str, Any], mesh: Mesh, shard: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Replicates the variables, except those in `shard`, split along an axis over the mesh.

    Args:
        variables: `{variable op name: array}`.
        mesh: the mesh (its first axis is used).
        shard: `{variable op name: axis}`, e.g. `{"embedding": 0}` to keep each device's rows of a
            large embedding only; XLA gathers the looked-up rows across devices.

    Raises:
        FeedError: naming a variable that is not in `variables` or whose axis does not divide evenly.
    """
    shard = dict(shard or {})
    unknown = sorted(set(shard) - set(variables))
    if unknown:
        raise FeedError(f"shard_variables: no variables {unknown} (have {sorted(variables)[:8]} ...)")
    out = {}
    n = mesh.devices.size
    for name, value in variables.items():
        if name not in shard:
            out[name] = _put(value, NamedSharding(mesh, PartitionSpec()))
            continue
        ndim = np.ndim(value)
        axis = shard[name] % max(ndim, 1)
        if ndim == 0 or np.shape(value)[axis] % n:
            raise FeedError(
                f"shard_variables: {name!r} of shape {np.shape(value)} does not split along axis {shard[name]} "
                f"over {n} devices"
            )
        out[name] = _put(value, batch_sharding(mesh, ndim, axis))
    return out


def to_host(tree: Any) -> Any:
    """NumPy copies of a pytree's arrays, gathered from every process when they are split across them.

    Use it before `graph.saver.save` when variables are sharded (replicated ones convert directly).
    """

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x) if isinstance(x, jax.Array) else x

    return jax.tree_util.tree_map(get, tree)


def _put(x: Any, sharding: NamedSharding) -> Any:
    if isinstance(x, np.ndarray) and x.dtype == object:
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
