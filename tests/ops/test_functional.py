"""V2 functional control flow (If, While, Case, function calls, TensorLists) against TensorFlow."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from oracle import compare_with_tf, get_tf

pytestmark = pytest.mark.oracle

RNG = np.random.default_rng(1)
X = RNG.standard_normal((3, 4)).astype(np.float32)
SEQ = RNG.standard_normal((2, 5, 3)).astype(np.float32)
LENGTHS = np.array([5, 2], np.int32)


@contextlib.contextmanager
def control_flow_v2(intermediates=True):
    tf = get_tf()
    tf.compat.v1.enable_control_flow_v2()
    # The oracle adds tf.gradients after running the forward graph; v2 ops must then already
    # output the intermediates their gradients need (loops accumulate them in TensorLists).
    tf.compat.v1.experimental.output_all_intermediates(intermediates)
    try:
        yield tf
    finally:
        tf.compat.v1.experimental.output_all_intermediates(False)
        tf.compat.v1.disable_control_flow_v2()


def _x(tf):
    return tf.compat.v1.placeholder(tf.float32, X.shape, name="x")


def _if(tf):
    x = _x(tf)
    p = tf.compat.v1.placeholder(tf.bool, [], name="p")
    v = tf.compat.v1.get_variable("v", initializer=np.float32(np.full((3, 4), 0.5)), use_resource=True)
    a, b = tf.cond(p, lambda: (x * v, tf.reduce_sum(x)), lambda: (tf.exp(x), tf.reduce_max(x)))
    return [a, b]


def _static_if(tf):
    x = _x(tf)
    return tf.cond(tf.constant(True), lambda: x * 2.0, lambda: x - 1.0)


def _while(tf):
    x = _x(tf)
    return tf.while_loop(lambda i, y: i < 4, lambda i, y: (i + 1, tf.sin(y) * 1.5 + x), [tf.constant(0), x])[1]


def _while_max_iterations(tf):
    x = _x(tf)
    return tf.while_loop(
        lambda y: tf.reduce_sum(tf.abs(y)) < 1e9, lambda y: (y * 1.5,), (x,), maximum_iterations=3
    )[0]


def _while_dynamic(tf):
    x = _x(tf)
    return tf.while_loop(lambda y: tf.reduce_sum(tf.abs(y)) < 100.0, lambda y: (y * 1.5 + 0.1,), (x,))[0]


def _case(tf):
    x = _x(tf)
    k = tf.compat.v1.placeholder(tf.int32, [], name="k")
    return tf.switch_case(k, [lambda: x * 2.0, lambda: tf.sin(x), lambda: -x])


def _dynamic_rnn(with_lengths):
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, SEQ.shape, name="x")
        lengths = tf.compat.v1.placeholder(tf.int32, [2], name="len") if with_lengths else None
        cell = tf.compat.v1.nn.rnn_cell.GRUCell(4)
        out, state = tf.compat.v1.nn.dynamic_rnn(cell, x, sequence_length=lengths, dtype=tf.float32)
        return [out, state]

    return build


def _dynamic_rnn_lstm(tf):
    x = tf.compat.v1.placeholder(tf.float32, SEQ.shape, name="x")
    out, state = tf.compat.v1.nn.dynamic_rnn(tf.compat.v1.nn.rnn_cell.LSTMCell(3), x, dtype=tf.float32)
    return [out, state.c, state.h]


def _map_fn(tf):
    x = _x(tf)
    return tf.map_fn(lambda row: tf.reduce_sum(row * row) + row[0], x)


V2_CASES = {
    "if_true": (_if, {"x:0": X, "p:0": np.bool_(True)}, True),
    "if_false": (_if, {"x:0": X, "p:0": np.bool_(False)}, True),
    "static_if": (_static_if, {"x:0": X}, True),
    "while": (_while, {"x:0": X}, True),
    "while_max_iterations": (_while_max_iterations, {"x:0": X}, True),
    "while_dynamic": (_while_dynamic, {"x:0": X}, False),
    "case_0": (_case, {"x:0": X, "k:0": np.int32(0)}, True),
    "case_1": (_case, {"x:0": X, "k:0": np.int32(1)}, True),
    "case_out_of_range": (_case, {"x:0": X, "k:0": np.int32(7)}, True),
    "dynamic_rnn_gru_lengths": (_dynamic_rnn(True), {"x:0": SEQ, "len:0": LENGTHS}, True),
    "dynamic_rnn_lstm": (_dynamic_rnn_lstm, {"x:0": SEQ}, True),
    "map_fn": (_map_fn, {"x:0": X}, True),
}


@pytest.mark.parametrize("case", list(V2_CASES))
def test_control_flow_v2(case):
    build, feeds, grads = V2_CASES[case]
    with control_flow_v2(intermediates=grads):
        compare_with_tf(build, feeds, grads=grads, rtol=1e-5, atol=1e-5)


def test_tf_function_call_in_v1_graph():
    def build(tf):
        x = _x(tf)

        @tf.function
        def f(a, b):
            return tf.tanh(a) * b, tf.reduce_sum(a)

        y, s = f(x, tf.constant(2.0))
        return [y, s]

    # (TF cannot add gradients of a call after the graph ran, so the oracle checks values only.)
    compare_with_tf(build, {"x:0": X}, rtol=1e-5, atol=1e-5)

