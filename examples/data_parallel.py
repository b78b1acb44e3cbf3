"""Data-parallel training of a saved TF1 model over every local device, two ways.

The bundled MNIST MLP (examples/model/mnist_mlp-100.*) is trained with the batch split over all
devices and the variables replicated, using only `jax.sharding` (through `jaxmeta.parallel`):

1. the graph's own `train_op` (`graph.step` under `jax.jit`): XLA inserts the all-reduce because the
   graph's loss is a batch mean;
2. the graph's loss with `jax.grad` and optax SGD.

Each is checked against the same steps on a single device. On a CPU-only machine, make several
devices first:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/data_parallel.py [--steps N]
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np
import optax

import jaxmeta
from jaxmeta import parallel

MODEL_DIR = pathlib.Path(__file__).resolve().parent / "model"


def batches(steps: int, batch: int, seed: int = 0):
    """A learnable synthetic MNIST stand-in: the label is the argmax of a fixed projection."""
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((784, 10)).astype(np.float32)
    for _ in range(steps):
        images = rng.random((batch, 784), dtype=np.float32)
        labels = np.argmax(images @ projection, axis=1).astype(np.int32)
        yield images, labels


def train_op_run(graph, variables, steps, batch, mesh=None):
    """`steps` runs of the graph's train_op; data-parallel over `mesh` when given."""
    loss = graph.get_collection("loss")[0]
    train_op = graph.get_collection("train_op")[0]
    train = jax.jit(graph.step(loss, feeds=["images:0", "labels:0"], targets=[train_op]))
    if mesh is not None:
        variables = parallel.replicate(variables, mesh)
    for images, labels in batches(steps, batch):
        if mesh is not None:
            images, labels = parallel.shard_batch((images, labels), mesh)
        value, variables = train(variables, images, labels)
    return float(value), variables


def optax_run(graph, variables, steps, batch, mesh=None):
    """`steps` of `jax.grad` + optax SGD on the graph's loss; data-parallel over `mesh` when given."""
    loss_fn = graph.function(graph.get_collection("loss")[0], feeds=["images:0", "labels:0"])
    params, frozen = graph.split_trainable(variables)
    optimizer = optax.sgd(0.01, momentum=0.9)
    if mesh is not None:
        params, frozen = parallel.replicate((params, frozen), mesh)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, images, labels):
        value, grads = jax.value_and_grad(lambda p: loss_fn({**frozen, **p}, images, labels))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    for images, labels in batches(steps, batch, seed=1):
        if mesh is not None:
            images, labels = parallel.shard_batch((images, labels), mesh)
        params, opt_state, value = update(params, opt_state, images, labels)
    return float(value), {**frozen, **params}


def max_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)))) for k in a)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-per-device", type=int, default=8)
    args = parser.parse_args(argv)

    graph = jaxmeta.import_meta_graph(MODEL_DIR / "mnist_mlp-100.meta")
    variables = graph.saver.restore(jaxmeta.latest_checkpoint(MODEL_DIR))
    mesh = parallel.batch_mesh()
    batch = args.batch_per_device * mesh.devices.size
    print(f"{mesh.devices.size} devices ({jax.devices()[0].platform}), global batch {batch}")

    for name, run in (("train_op", train_op_run), ("jax.grad+optax", optax_run)):
        loss_dp, vars_dp = run(graph, variables, args.steps, batch, mesh)
        loss_1, vars_1 = run(graph, variables, args.steps, batch)
        sharding = next(iter(vars_dp.values())).sharding
        diff = max_difference(vars_1, vars_dp)
        print(
            f"{name}: loss {loss_dp:.5f} data-parallel, {loss_1:.5f} one device; "
            f"largest variable difference {diff:.2e}; variables replicated: {sharding.is_fully_replicated}"
        )
        assert diff < 1e-4, f"{name}: data-parallel training diverged from single-device training"


if __name__ == "__main__":
    main()
