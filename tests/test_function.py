"""`jaxmeta.freeze`: a function's variables bound as compile-time constants, for inference."""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np
import pytest
from oracle import assert_close, get_tf

import jaxmeta

MODEL = pathlib.Path(__file__).resolve().parents[1] / "examples" / "model"


def test_frozen_function_computes_the_same_with_variables_as_constants():
    graph = jaxmeta.import_meta_graph(MODEL / "mnist_mlp-100.meta")
    variables = graph.saver.restore(jaxmeta.latest_checkpoint(MODEL))
    f = graph.function(graph.get_collection("logits")[0], feeds=["images:0"])
    images = np.random.default_rng(0).standard_normal((4, 784)).astype(np.float32)
    frozen = jaxmeta.freeze(f, variables)
    expected = jax.jit(f)(variables, images)
    assert_close(jax.jit(frozen)(images), expected, rtol=1e-5, atol=1e-6, what="frozen logits")
    assert_close(jaxmeta.autotune(frozen, images, repeats=1)(images), expected, rtol=1e-5, atol=1e-6,
                 what="frozen, autotuned logits")
    # The compiled program takes the images only: the weights are constants in it.
    signature = re.search(r"func\.func public @main\(([^)]*)\)", jax.jit(frozen).lower(images).as_text())
    assert re.fullmatch(r"%arg0: tensor<4x784xf32>( \{[^}]*\})?", signature.group(1))
    # Freezing copies the dict: later changes to it are not seen.
    variables.clear()
    assert_close(jax.jit(frozen)(images), expected, rtol=1e-5, atol=1e-6, what="after the dict changed")


def test_fed_integers_that_do_not_fit_32_bits_raise():
    graph = jaxmeta.import_meta_graph(MODEL / "mnist_mlp-100.meta")
    variables = graph.saver.restore(str(MODEL / "mnist_mlp-100"))
    f = graph.function(graph.get_collection("loss")[0], feeds=["images:0", "labels:0"])
    images = np.zeros((2, 784), np.float32)
    f(variables, images, np.array([1, 2], np.int64))  # int64 values that fit: narrowed, as JAX does
    with pytest.raises(jaxmeta.PrecisionError, match="feed labels:0"):
        f(variables, images, np.array([1, 2**40], np.int64))


def test_control_edges_on_a_fed_placeholder_are_met():
    """TF moves a fed Placeholder's control edges to its feed: tf.metrics.mean_tensor's update
    reads its variables under a control dependency on its input, which must not ask for another
    feed."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        value, update = tf.compat.v1.metrics.mean_tensor(x)
        init = tf.compat.v1.local_variables_initializer()
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    batches = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.float32)]
    with jaxmeta.Session(jaxmeta.import_meta_graph(meta)) as sess:
        sess.run(init.name)
        for batch in batches:
            sess.run(update.name, {"x:0": batch})
        np.testing.assert_allclose(sess.run(value.name), (batches[0] + batches[1]) / 2)
