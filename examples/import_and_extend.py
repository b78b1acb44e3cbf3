"""Import and extend: reuse a saved TF1 graph as a feature extractor and grow a JAX model on it.

The TF1 MetaGraph guide extends an imported graph with new TF layers on top of its `logits`
collection. jaxmeta does the same in JAX: `graph.function` turns any tensor of the imported graph
(here the second hidden layer) into a pure function of the restored variables, and new layers are
plain JAX code trained with optax — optionally fine-tuning the imported variables too.

Run: python examples/import_and_extend.py [--steps N] [--fine-tune]
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


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--fine-tune", action="store_true", help="also train the imported variables")
    args = parser.parse_args(argv)

    graph = jaxmeta.import_meta_graph(MODEL_DIR / "mnist_mlp-100.meta")
    imported = graph.saver.restore(jaxmeta.latest_checkpoint(MODEL_DIR))
    logits = graph.get_collection("logits")[0]
    print(f"imported {len(graph)} nodes; extending {logits} and hidden2/Relu:0")

    # The imported graph, cut at two tensors, as pure JAX functions of (variables, images).
    features = graph.function(["hidden2/Relu:0", logits], feeds=["images:0"])

    # The extension: a new 2-class head ("is the digit even?") on [hidden2, old logits].
    key = jax.random.key(0)
    width = graph.get_tensor_by_name("hidden2/Relu:0").shape[-1] + logits.shape[-1]
    head = {"w": 0.1 * jax.random.normal(key, (width, 2)), "b": jnp.zeros(2)}

    def loss_fn(params, variables, images, labels):
        hidden, old_logits = features(variables, images)
        new_logits = jnp.concatenate([hidden, old_logits], axis=-1) @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(new_logits, labels).mean()

    trainable = {"head": head, "imported": {v.op_name: imported[v.op_name] for v in graph.trainable_variables()}}
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(trainable)

    @jax.jit
    def update(trainable, opt_state, images, labels):
        def objective(t):
            variables = {**imported, **t["imported"]} if args.fine_tune else imported
            return loss_fn(t["head"], variables, images, labels)

        value, grads = jax.value_and_grad(objective)(trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, value

    rng = np.random.default_rng(0)
    projection = rng.standard_normal((784, 10)).astype(np.float32)
    for step in range(args.steps):
        images = rng.random((64, 784), dtype=np.float32)
        labels = (np.argmax(images @ projection, axis=1) % 2).astype(np.int32)
        trainable, opt_state, value = update(trainable, opt_state, images, labels)
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {float(value):.4f}")
    return float(value)


if __name__ == "__main__":
    main()
