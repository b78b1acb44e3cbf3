"""Optimizer update ops (`ApplyX`, `ResourceApplyX`, sparse variants) against TensorFlow.

Each case builds the raw op on variables, runs it K times in TF, and compares every variable
(var and slots) with K jitted, donated `graph.step` calls in jaxmeta.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import assert_close, get_tf

import jaxmeta

pytestmark = pytest.mark.oracle

K = 3


def run_steps(build, feeds=None, k=K, *, rtol=2e-5, atol=2e-6, variables_from=None):
    """Runs `build(tf)`'s returned op k times in TF and in jaxmeta; compares every variable.

    Returns the TF variables after the steps.
    """
    tf = get_tf()
    feeds = dict(feeds or {})
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(0)
        op = build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        tf_vars = tf.compat.v1.global_variables() + tf.compat.v1.local_variables()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.variables_initializer(tf_vars))
            read = {v.op.name: v.read_value() if hasattr(v, "read_value") else v for v in tf_vars}
            before = sess.run(read)
            feed_dict = {g.get_tensor_by_name(name): value for name, value in feeds.items()}
            for _ in range(k):
                sess.run(op, feed_dict)
            after = sess.run(read)
    graph = jaxmeta.import_meta_graph(meta)
    step = jax.jit(graph.step([], feeds=list(feeds), targets=[op.name]), donate_argnums=0)
    variables = {name: jnp.asarray(value) for name, value in before.items()}
    for _ in range(k):
        _, variables = step(variables, *feeds.values())
    assert set(variables) == set(after)
    for name, want in after.items():
        assert_close(variables[name], want, rtol=rtol, atol=atol, what=f"variable {name} after {k} steps")
    return after


# Hyperparameter values by input name; a tuple means (value, make-it-a-variable).
SCALARS = {
    "lr": 0.1, "alpha": 0.1, "l1": 0.05, "l2": 0.02, "l2_shrinkage": 0.01, "lr_power": -0.5,
    "momentum": 0.9, "rho": 0.9, "epsilon": 1e-3, "beta1": 0.9, "beta2": 0.99,
    "beta1_power": (0.9**2, True), "beta2_power": (0.99**2, True), "beta": 0.9, "sign_decay": 0.99,
    "logbase": float(np.log(2.0)),
}
SLOT_INIT = {"var": "randn", "mg": "small", "m": "randn"}

DENSE = [
    ("GradientDescent", {}, {}),
    ("ProximalGradientDescent", {}, {}),
    ("ProximalGradientDescent", {}, {"l1": 0.0}),
    ("Momentum", {}, {}),
    ("Momentum", {"use_nesterov": True}, {}),
    ("KerasMomentum", {}, {}),
    ("KerasMomentum", {"use_nesterov": True}, {}),
    ("Adam", {}, {}),
    ("Adam", {"use_nesterov": True}, {}),
    ("AdamWithAmsgrad", {}, {}),
    ("AdaMax", {}, {}),
    ("RMSProp", {}, {}),
    ("CenteredRMSProp", {}, {}),
    ("Adagrad", {}, {}),
    ("Adagrad", {"update_slots": False}, {}),
    ("AdagradV2", {}, {}),
    ("AdagradV2", {"update_slots": False}, {}),
    ("AdagradDA", {}, {}),
    ("AdagradDA", {}, {"l1": 0.0}),
    ("ProximalAdagrad", {}, {}),
    ("ProximalAdagrad", {}, {"l1": 0.0}),
    ("Adadelta", {}, {"lr": 1.0}),
    ("Ftrl", {}, {}),
    ("Ftrl", {}, {"lr_power": -0.3, "l1": 0.0}),
    ("Ftrl", {"multiply_linear_by_lr": True}, {}),
    ("FtrlV2", {}, {}),
    ("FtrlV2", {"multiply_linear_by_lr": True}, {"lr_power": -0.7}),
    ("AddSign", {}, {}),
    ("PowerSign", {}, {}),
]
SPARSE = [
    ("Adagrad", {}, {}),
    ("AdagradV2", {}, {}),
    ("AdagradDA", {}, {}),
    ("ProximalAdagrad", {}, {}),
    ("ProximalGradientDescent", {}, {}),
    ("Momentum", {}, {}),
    ("Momentum", {"use_nesterov": True}, {}),
    ("KerasMomentum", {}, {}),
    ("RMSProp", {}, {}),
    ("CenteredRMSProp", {}, {}),
    ("Adadelta", {}, {"lr": 1.0}),
    ("Ftrl", {}, {}),
    ("FtrlV2", {}, {}),
]
RESOURCE_ONLY = {"KerasMomentum", "AdamWithAmsgrad"}


def _case_id(case):
    name, attrs, scalars = case
    extra = [k for k, v in attrs.items()] + [f"{k}={v}" for k, v in scalars.items()]
    return "-".join([name, *extra])


def _build_update(op_type, attrs, scalars, *, sparse, indices=None, shape=(4, 3), seed=0, fed_indices=False,
                  dtype=np.float32):
    """A builder making every variable input a variable and calling the raw op once."""
    get_tf()  # the op's signature comes from TF's registry: skipped without TensorFlow
    from tensorflow.python.framework import op_def_registry

    resource = op_type.startswith("Resource")
    op_def = op_def_registry.get(op_type)
    rng = np.random.default_rng(seed)

    def build(tf):
        args = {}
        var = None
        for arg in op_def.input_arg:
            name = arg.name
            is_var = arg.is_ref or arg.type == tf.resource.as_datatype_enum
            if is_var:
                kind = SLOT_INIT.get(name, "positive")
                init = {
                    "randn": rng.standard_normal(shape),
                    "small": 0.1 * rng.standard_normal(shape),
                    "positive": rng.uniform(0.1, 1.0, shape),
                }[kind].astype(dtype)
                v = tf.compat.v1.get_variable(name, initializer=init, use_resource=resource)
                var = v if name == "var" else var
                args[name] = v.handle if resource else v
            elif name in ("grad", "delta"):
                # A fed gradient: the unit tests need no ops beyond the update itself.
                args[name] = tf.compat.v1.placeholder(dtype, None, name="g0")
            elif name == "indices" and fed_indices:  # traced: duplicates are detected at run time
                args[name] = tf.compat.v1.placeholder(tf.int32, [len(indices)], name="idx")
            elif name == "indices":
                args[name] = tf.constant(indices, tf.int32)
            elif name == "global_step":
                args[name] = tf.constant(3, tf.int64)
            else:
                value = scalars.get(name, SCALARS[name])
                if isinstance(value, tuple):
                    v = tf.compat.v1.get_variable(name, initializer=np.dtype(dtype).type(value[0]),
                                                  use_resource=resource)
                    args[name] = v.read_value() if resource else v
                else:
                    args[name] = tf.constant(value, dtype)
        return getattr(tf.raw_ops, op_type)(**args, **attrs, name="update")

    return build


def _forms(cases, *extra):
    """(case, resource, *extra) params; TF defines some ops only in the resource form."""
    params = []
    for case in cases:
        for resource in (False, True):
            if resource or case[0] not in RESOURCE_ONLY:
                for more in extra or [()]:
                    params.append(pytest.param(case, resource, *more, id="-".join(
                        [_case_id(case), "resource" if resource else "ref", *[str(m) for m in more[2:]]])))
    return params


@pytest.mark.parametrize("case,resource", _forms(DENSE))
def test_dense_apply(case, resource):
    name, attrs, scalars = case
    op_type = f"{'Resource' if resource else ''}Apply{name}"
    g0 = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    run_steps(_build_update(op_type, attrs, scalars, sparse=False), {"g0:0": g0})


NO_HALF_KERNEL = {"ProximalGradientDescent", "AdagradDA", "ProximalAdagrad"}  # TF: float and double only


@pytest.mark.parametrize("case,dtype", [
    pytest.param(case, dtype, id=f"{_case_id(case)}-{dtype}") for case in DENSE for dtype in ("float16", "float64")
    if dtype == "float64" or case[0] not in NO_HALF_KERNEL])
def test_dense_apply_half_and_double(case, dtype):
    """The same updates in float16 (TF computes in half: results to ~1e-3) and float64 (narrowed
    to float32 without x64)."""
    name, attrs, scalars = case
    g0 = np.random.default_rng(1).standard_normal((4, 3)).astype(dtype)
    tol = 3e-3 if dtype == "float16" else 2e-5
    run_steps(_build_update(f"ResourceApply{name}", attrs, scalars, sparse=False, dtype=np.dtype(dtype)),
              {"g0:0": g0}, rtol=tol, atol=tol)


INDICES = [  # (indices, fed through a placeholder (traced), id)
    ([3, 0, 4], False, "unique"), ([2], False, "one"), ([1, 4, 1, 1], False, "duplicates"),
    ([3, 0, 4], True, "unique-fed"), ([1, 4, 1, 1], True, "duplicates-fed"),
]


@pytest.mark.parametrize("case,resource,indices,fed,_id", _forms(SPARSE, *INDICES))
def test_sparse_apply(case, resource, indices, fed, _id):
    """TF's sparse kernels update a repeated index once per occurrence, in order."""
    name, attrs, scalars = case
    op_type = f"{'Resource' if resource else ''}SparseApply{name}"
    g0 = np.random.default_rng(1).standard_normal((len(indices), 3)).astype(np.float32)
    feeds = {"g0:0": g0, **({"idx:0": np.int32(indices)} if fed else {})}
    build = _build_update(op_type, attrs, scalars, sparse=True, indices=indices, shape=(5, 3), fed_indices=fed)
    run_steps(build, feeds)


def test_sparse_apply_rank1_variable():
    op_type = "SparseApplyMomentum"
    g0 = np.float32([0.5, -1.0])
    run_steps(_build_update(op_type, {}, {}, sparse=True, indices=[2, 0], shape=(5,)), {"g0:0": g0})


def test_ref_form_returns_updated_ref():
    def build(tf):
        v = tf.compat.v1.get_variable("v", initializer=np.float32([1.0, 2.0]), use_resource=False)
        out = tf.raw_ops.ApplyGradientDescent(var=v, alpha=tf.constant(0.5), delta=tf.constant([1.0, 1.0]))
        return tf.identity(out, name="twice")

    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    outs, new = jax.jit(graph.step("twice:0"))({"v": jnp.float32([1.0, 2.0])})
    np.testing.assert_allclose(outs, [0.5, 1.5])
    np.testing.assert_allclose(new["v"], [0.5, 1.5])
