"""V1 control flow (while loops, conds, TensorArrays, stacks, dynamic_rnn) against TensorFlow."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import compare_with_tf, get_tf, run_tf

from jaxmeta.ops import control_flow

pytestmark = pytest.mark.oracle

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4)).astype(np.float32)
SEQ = RNG.standard_normal((2, 5, 3)).astype(np.float32)  # batch, time, features


def _x(tf, shape=(3, 4), name="x"):
    return tf.compat.v1.placeholder(tf.float32, shape, name=name)


# -- while loops ------------------------------------------------------------------------------------


def _counter(tf):
    i = tf.constant(0)
    return tf.while_loop(lambda i: i < 10, lambda i: i + 1, [i])


def _doubling(tf):
    x = _x(tf)
    _, y = tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 2.0 + tf.sin(y)), [tf.constant(0), x])
    return y


def _data_dependent(tf):
    # The trip count depends on the fed data: a lax.while_loop (forward only).
    x = _x(tf)
    return tf.while_loop(lambda y: tf.reduce_sum(tf.abs(y)) < 100.0, lambda y: y * 1.5 + 0.1, [x])


def _max_iterations(tf):
    x = _x(tf)
    return tf.while_loop(lambda y: tf.reduce_sum(tf.abs(y)) < 1e9, lambda y: (y * 1.5,), (x,), maximum_iterations=4)


def _nested(tf, inner_trips=lambda i: 2):
    x = _x(tf)

    def outer_body(i, y):
        n = inner_trips(i)
        _, z = tf.while_loop(lambda j, z: j < n, lambda j, z: (j + 1, z + tf.cos(z)), [tf.constant(0), y])
        return i + 1, z * 0.5

    return tf.while_loop(lambda i, y: i < 3, outer_body, [tf.constant(0), x])[1]


def _nested_dynamic(tf):
    # The inner trip count depends on the outer loop variable: a lax.while_loop inside a scan.
    return _nested(tf, inner_trips=lambda i: i)


def _invariant(tf):
    x = _x(tf)
    w = tf.constant(RNG.standard_normal((4, 4)).astype(np.float32))
    return tf.while_loop(lambda i, y: i < 4, lambda i, y: (i + 1, tf.tanh(tf.matmul(y, w) + x)), [0, x])[1]


def _cond_in_loop(tf):
    x = _x(tf)

    def body(i, y):
        y = tf.cond(tf.equal(i % 2, 0), lambda: y * 2.0, lambda: y - 1.0)
        return i + 1, y

    return tf.while_loop(lambda i, y: i < 5, body, [tf.constant(0), x])[1]


def _loop_in_cond(tf):
    x = _x(tf)
    p = tf.compat.v1.placeholder(tf.bool, [], name="p")

    def looped():
        return tf.while_loop(lambda i, y: i < 3, lambda i, y: (i + 1, y * 1.5), [tf.constant(0), x])[1]

    return tf.cond(p, looped, lambda: x - 1.0)


def _cond(tf):
    x = _x(tf)
    p = tf.compat.v1.placeholder(tf.bool, [], name="p")
    a, b = tf.cond(p, lambda: (x * 2.0, tf.reduce_sum(x)), lambda: (tf.exp(x), tf.reduce_max(x)))
    return [a, b]


def _nested_cond(tf):
    x = _x(tf)
    p = tf.compat.v1.placeholder(tf.bool, [], name="p")
    q = tf.reduce_sum(x) > 0.0
    return tf.cond(p, lambda: tf.cond(q, lambda: x * 3.0, lambda: x + 3.0), lambda: -x)


def _cond_variables(tf):
    x = _x(tf)
    p = tf.compat.v1.placeholder(tf.bool, [], name="p")
    v = tf.compat.v1.get_variable("v", initializer=np.float32(np.ones((3, 4))), use_resource=False)
    r = tf.compat.v1.get_variable("r", initializer=np.float32(np.full((3, 4), 2.0)), use_resource=True)
    return tf.cond(p, lambda: v * x, lambda: r.read_value() + x)


def _map_fn(tf):
    x = _x(tf)
    return tf.map_fn(lambda row: tf.reduce_sum(row * row) + row[0], x)


def _scan(tf):
    x = _x(tf)
    return tf.scan(lambda acc, row: acc * 0.5 + tf.sin(row), x)


def _tensor_array_loop(tf):
    x = _x(tf)
    ta = tf.TensorArray(tf.float32, size=4, clear_after_read=False)

    def body(i, y, ta):
        y = tf.tanh(y + 1.0)
        return i + 1, y, ta.write(i, y)

    _, y, ta = tf.while_loop(lambda i, y, ta: i < 4, body, [tf.constant(0), x, ta])
    return [y, ta.stack(), ta.concat(), ta.read(2), ta.size()]


def _tensor_array_unstack(tf):
    x = _x(tf)
    inp = tf.TensorArray(tf.float32, size=3).unstack(x)
    out = tf.TensorArray(tf.float32, size=3, element_shape=[4])

    def body(i, acc, out):
        acc = acc + inp.read(i)
        return i + 1, acc, out.write(i, acc * 2.0)

    _, acc, out = tf.while_loop(lambda i, a, o: i < 3, body, [tf.constant(0), tf.zeros([4]), out])
    return [acc, out.gather([2, 0])]


FORWARD_CASES = {
    "counter": (_counter, {}, False),
    "doubling": (_doubling, {"x:0": X}, True),
    "max_iterations": (_max_iterations, {"x:0": X}, True),
    "nested": (_nested, {"x:0": X}, True),
    "invariant": (_invariant, {"x:0": X}, True),
    "cond_in_loop": (_cond_in_loop, {"x:0": X}, True),
    "loop_in_cond_true": (_loop_in_cond, {"x:0": X, "p:0": np.bool_(True)}, True),
    "loop_in_cond_false": (_loop_in_cond, {"x:0": X, "p:0": np.bool_(False)}, True),
    "cond_true": (_cond, {"x:0": X, "p:0": np.bool_(True)}, True),
    "cond_false": (_cond, {"x:0": X, "p:0": np.bool_(False)}, True),
    "nested_cond": (_nested_cond, {"x:0": X, "p:0": np.bool_(True)}, True),
    "cond_variables_true": (_cond_variables, {"x:0": X, "p:0": np.bool_(True)}, True),
    "cond_variables_false": (_cond_variables, {"x:0": X, "p:0": np.bool_(False)}, True),
    "map_fn": (_map_fn, {"x:0": X}, True),
    "scan": (_scan, {"x:0": X}, True),
    "tensor_array_loop": (_tensor_array_loop, {"x:0": X}, True),
    "tensor_array_unstack": (_tensor_array_unstack, {"x:0": X}, True),
}


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_and_grad(case):
    build, feeds, grads = FORWARD_CASES[case]
    compare_with_tf(build, feeds, grads=grads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", [_data_dependent, _nested_dynamic])
def test_dynamic_trip_count_runs_forward(build):
    compare_with_tf(build, {"x:0": X}, rtol=1e-5, atol=1e-5)
