"""Continue training a saved TF1 model in JAX, two ways, and save the result.

The bundled model (examples/model/, made by tests/fixtures/generate.py with TensorFlow) is the
TF1 MetaGraph guide's MNIST MLP, saved at global step 100. This script:

1. imports `mnist_mlp-100.meta` and restores the latest checkpoint (no TensorFlow involved);
2. runs the graph's own `train_op` (GradientDescent + global_step) for a few steps under
   `jax.jit` with donated variables — exactly what `sess.run(train_op)` does in TF1;
3. trains the same loss with `jax.grad` and optax Adam instead;
4. saves a TF checkpoint (TF1's Saver can restore it) and an Orbax checkpoint with the optimizer
   state.

Run: python examples/continue_training.py [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxmeta

MODEL_DIR = pathlib.Path(__file__).resolve().parent / "model"


def batches(steps: int, batch: int = 64, seed: int = 0):
    """A learnable synthetic MNIST stand-in: the label is the argmax of a fixed projection."""
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((784, 10)).astype(np.float32)
    for _ in range(steps):
        images = rng.random((batch, 784), dtype=np.float32)
        labels = np.argmax(images @ projection, axis=1).astype(np.int32)
        yield images, labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("out"))
    args = parser.parse_args(argv)

    graph = jaxmeta.import_meta_graph(MODEL_DIR / "mnist_mlp-100.meta")
    prefix = jaxmeta.latest_checkpoint(MODEL_DIR)
    variables = graph.saver.restore(prefix)
    print(f"restored {len(variables)} variables from {prefix}")

    feeds = ["images:0", "labels:0"]
    loss = graph.get_collection("loss")[0]
    train_op = graph.get_collection("train_op")[0]

    # (a) The graph's own training op, as TF1 would run it.
    train = jax.jit(graph.step(loss, feeds=feeds, targets=[train_op]), donate_argnums=0)
    tf_vars = jax.tree.map(jnp.copy, variables)  # donated below: keep `variables` for the optax run
    for i, (x, y) in enumerate(batches(args.steps)):
        loss_value, tf_vars = train(tf_vars, x, y)
        if i % 5 == 0 or i == args.steps - 1:
            print(f"train_op step {int(tf_vars['global_step'])}: loss {float(loss_value):.4f}")

    # (b) The JAX way: the graph's loss, jax.grad and optax.
    loss_fn = graph.function(loss, feeds=feeds)
    params, frozen = graph.split_trainable(variables)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, x, y):
        value, grads = jax.value_and_grad(lambda p: loss_fn({**frozen, **p}, x, y))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    for i, (x, y) in enumerate(batches(args.steps, seed=1)):
        params, opt_state, value = update(params, opt_state, x, y)
        if i % 5 == 0 or i == args.steps - 1:
            print(f"optax step {i}: loss {float(value):.4f}")

    # Save both: a TF checkpoint of the train_op run, an Orbax checkpoint of the optax run.
    args.out.mkdir(parents=True, exist_ok=True)
    saved = graph.saver.save(tf_vars, str(args.out / "mnist_mlp"), global_step=int(tf_vars["global_step"]))
    print(f"saved TF checkpoint {saved} (TF1's Saver.restore reads it)")
    orbax_dir = (args.out / "orbax").resolve()
    # force=True: this directory is the example's own output, which a rerun replaces.
    jaxmeta.save_orbax(orbax_dir, {**frozen, **params}, extra={"opt_state": opt_state}, force=True)
    print(f"saved Orbax checkpoint {orbax_dir}")
    assert jnp.isfinite(value)


if __name__ == "__main__":
    main()
