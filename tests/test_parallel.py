"""Data parallelism with `jaxmeta.parallel`: 8 devices train as one does, for an MLP and a CNN.

The data-parallel checks run in subprocesses with 8 forced host devices (`run_with_devices`); the
many-host check runs two processes (4 devices each) under `jax.distributed.initialize` with a
loopback coordinator.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from test_devices import run_with_devices

import jaxmeta
from jaxmeta import parallel

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = REPO / "examples" / "model"
MLP_FEEDS = ["images:0", "labels:0"]
CNN_FEEDS = ["x:0", "labels:0"]
TOLERANCE = dict(rtol=2e-5, atol=2e-6)


# -- training loops, the same code for one device and for a mesh --------------------------------------
def train_op_steps(graph, variables, batches, feeds, mesh=None):
    """Runs the graph's `train_op` over the batches; data-parallel when a mesh is given."""
    loss = graph.get_collection("loss")[0]
    train = jax.jit(graph.step(loss, feeds=feeds, targets=graph.get_collection("train_op")))
    if mesh is not None:
        variables = parallel.replicate(variables, mesh)
    losses = []
    for batch in batches:
        if mesh is not None:
            batch = parallel.shard_batch(batch, mesh)
        value, variables = train(variables, *batch)
        losses.append(float(value))
    return losses, variables


def optax_steps(graph, variables, batches, feeds, mesh=None):
    """`jax.grad` of the graph's loss + optax momentum SGD; data-parallel when a mesh is given."""
    loss_fn = graph.function(graph.get_collection("loss")[0], feeds=feeds)
    params, frozen = graph.split_trainable(variables)
    optimizer = optax.sgd(0.05, momentum=0.9)
    if mesh is not None:
        params, frozen = parallel.replicate((params, frozen), mesh)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, *batch):
        value, grads = jax.value_and_grad(lambda p: loss_fn({**frozen, **p}, *batch))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    losses = []
    for batch in batches:
        if mesh is not None:
            batch = parallel.shard_batch(batch, mesh)
        params, opt_state, value = update(params, opt_state, *batch)
        losses.append(float(value))
    return losses, {**frozen, **params}


def assert_same_training(graph, variables, batches, feeds, run, mesh, **shard):
    """Single-device and data-parallel runs of `run` give the same losses and variables."""
    losses_1, vars_1 = run(graph, variables, batches, feeds)
    if shard:
        variables = parallel.shard_variables(variables, mesh, shard["shard"])
    losses_n, vars_n = run(graph, variables, batches, feeds, mesh)
    np.testing.assert_allclose(losses_n, losses_1, **TOLERANCE)
    assert set(vars_n) == set(vars_1)
    for name in vars_1:
        np.testing.assert_allclose(np.asarray(vars_n[name]), np.asarray(vars_1[name]), err_msg=name, **TOLERANCE)
        if name not in shard.get("shard", {}):
            assert vars_n[name].sharding.is_fully_replicated, name
    assert max(abs(np.asarray(vars_n[k]) - np.asarray(variables[k])).max() for k in vars_n) > 1e-4  # it trained


def mlp_batches(steps, batch, seed=0):
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((784, 10)).astype(np.float32)
    out = []
    for _ in range(steps):
        images = rng.random((batch, 784), dtype=np.float32)
        out.append((images, np.argmax(images @ projection, axis=1).astype(np.int32)))
    return out


# -- the MLP (the bundled model) ---------------------------------------------------------------------
def test_mlp_data_parallel_on_8_devices():
    assert "ok" in run_with_devices("test_parallel", "check_mlp")


def check_mlp() -> None:
    """(8-device subprocess.) The bundled MLP: train_op, optax, a sharded weight, and the example."""
    graph = jaxmeta.import_meta_graph(MODEL / "mnist_mlp-100.meta")
    variables = graph.saver.restore(jaxmeta.latest_checkpoint(MODEL))
    mesh = parallel.batch_mesh()
    assert mesh.devices.size == 8
    batches = mlp_batches(3, 64)
    sharded = parallel.shard_batch(batches[0], mesh)
    assert [len(x.sharding.device_set) for x in sharded] == [8, 8]
    assert sharded[0].addressable_shards[0].data.shape == (8, 784)
    # The example checks train_op and optax training, 8 devices against one.
    sys.path.insert(0, str(REPO / "examples"))
    import data_parallel

    data_parallel.main(["--steps", "3"])
    # A large weight kept split along its first axis (as for an embedding), the rest replicated.
    assert_same_training(graph, variables, batches, MLP_FEEDS, train_op_steps, mesh, shard={"hidden1/weights": 0})

    # Errors name the fix.
    for bad, match in [(np.ones((60, 784), np.float32), "multiple of the device count"), (np.float32(1), "scalar")]:
        try:
            parallel.shard_batch(bad, mesh)
        except jaxmeta.FeedError as e:
            assert match in str(e), e
        else:
            raise AssertionError("shard_batch accepted a batch it cannot split")
    try:
        parallel.shard_variables(variables, mesh, {"hidden2/biases": 0})  # 16 rows over 8: fine
        parallel.shard_variables(variables, mesh, {"softmax_linear/biases": 0})  # 10 rows: no
    except jaxmeta.FeedError as e:
        assert "does not split" in str(e)
    else:
        raise AssertionError("shard_variables split 10 rows over 8 devices")

    print("ok")


# -- a CNN built with TensorFlow -------------------------------------------------------------------
def build_cnn(path: str) -> None:
    """A small TF1 CNN training graph (Conv2D/BiasAdd/Relu/MaxPool/MatMul, Momentum), exported."""
    from oracle import get_tf

    tf = get_tf()
    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph:
        x = v1.placeholder(tf.float32, [None, 8, 8, 2], name="x")
        labels = v1.placeholder(tf.int32, [None], name="labels")
        init = v1.truncated_normal_initializer(stddev=0.3, seed=1)
        with v1.variable_scope("cnn", use_resource=False):
            kernel = v1.get_variable("conv/kernel", [3, 3, 2, 4], initializer=init)
            bias = v1.get_variable("conv/bias", [4], initializer=v1.constant_initializer(0.1))
            dense = v1.get_variable("dense/kernel", [64, 5], initializer=init)
            dense_bias = v1.get_variable("dense/bias", [5], initializer=v1.zeros_initializer())
            global_step = v1.train.get_or_create_global_step()
        conv = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, [1, 1, 1, 1], "SAME"), bias))
        pooled = tf.nn.max_pool2d(conv, 2, 2, "VALID")
        logits = tf.matmul(tf.reshape(pooled, [-1, 64]), dense) + dense_bias
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train_op = v1.train.MomentumOptimizer(0.1, 0.9).minimize(loss, global_step=global_step)
        v1.add_to_collection("loss", loss)
        v1.add_to_collection("train_op", train_op)
        v1.train.export_meta_graph(filename=path, graph=graph)


@pytest.mark.oracle
def test_cnn_data_parallel_on_8_devices(tmp_path):
    path = str(tmp_path / "cnn.meta")
    build_cnn(path)
    assert "ok" in run_with_devices("test_parallel", "check_cnn", path)


def check_cnn(path: str) -> None:
    """(8-device subprocess.) The CNN: train_op (Momentum + slots) and optax, 8 devices vs one."""
    graph = jaxmeta.import_meta_graph(path)
    variables = graph.init_variables(jax.random.key(0))
    assert "cnn/conv/kernel/Momentum" in variables
    rng = np.random.default_rng(0)
    batches = [
        (rng.standard_normal((32, 8, 8, 2)).astype(np.float32), rng.integers(0, 5, 32).astype(np.int32))
        for _ in range(3)
    ]
    mesh = parallel.batch_mesh()
    assert_same_training(graph, variables, batches, CNN_FEEDS, train_op_steps, mesh)
    assert_same_training(graph, variables, batches, CNN_FEEDS, optax_steps, mesh)
    print("ok")


def test_cpu_devices_splits_the_cpu_before_jax_starts():
    code = (
        "import jax\n"
        "from jaxmeta import parallel\n"
        "from jaxmeta._devices import DevicePlacementError\n"
        "assert parallel.cpu_devices(3) == 3 and len(jax.devices('cpu')) == 3, jax.devices()\n"
        "assert parallel.cpu_devices(3) == 3  # again, with the same count: fine\n"
        "try:\n"
        "    parallel.cpu_devices(2)\n"
        "except DevicePlacementError as e:\n"
        "    assert 'right after `import jax`' in str(e), e\n"
        "    print('ok')\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# -- many hosts: two processes on this machine -------------------------------------------------------
def test_two_processes_train_as_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_parallel; test_parallel.check_process(*sys.argv[1:])"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i), str(port), str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err[-4000:]))
    for code_, out, err in results:
        assert code_ == 0, f"a process failed:\n{out}\n{err}"

    # The same steps in this process, on one device.
    graph = jaxmeta.import_meta_graph(MODEL / "mnist_mlp-100.meta")
    variables = graph.saver.restore(jaxmeta.latest_checkpoint(MODEL))
    losses, want = train_op_steps(graph, variables, mlp_batches(2, 32), MLP_FEEDS)
    for i in range(2):
        got = np.load(tmp_path / f"process{i}.npz")
        np.testing.assert_allclose(got["losses"], losses, **TOLERANCE)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], np.asarray(value), err_msg=name, **TOLERANCE)


def check_process(process_id: str, port: str, out_dir: str) -> None:
    """(One of two processes.) Data-parallel train_op steps over both processes' 8 devices."""
    pid = int(process_id)
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
    graph = jaxmeta.import_meta_graph(MODEL / "mnist_mlp-100.meta")
    variables = graph.saver.restore(jaxmeta.latest_checkpoint(MODEL))
    mesh = parallel.batch_mesh()
    # Each process feeds its own half of every global batch.
    local = [tuple(x[16 * pid : 16 * (pid + 1)] for x in batch) for batch in mlp_batches(2, 32)]
    losses, new = train_op_steps(graph, variables, local, MLP_FEEDS, mesh)
    host = parallel.to_host(new)
    np.savez(os.path.join(out_dir, f"process{pid}.npz"), losses=np.asarray(losses), **host)
    jax.distributed.shutdown()
