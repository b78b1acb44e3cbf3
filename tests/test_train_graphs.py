"""End to end: TF-built training graphs run K steps of their own train_op in jaxmeta.

For each model, K `sess.run(train_op)` in TF and K jitted, donated `graph.step` calls in jaxmeta
must leave the same variables (slots, batch-norm moving averages and global_step included), and
`jax.grad` of the graph's loss must equal `tf.gradients` at the initial variables.
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


def check_training(build, batches, *, k=K, rtol=1e-4, atol=1e-5, grad_rtol=1e-4, grad_atol=1e-5, grads=True,
                   step_error=None):
    """Builds `build(tf) -> (loss, train_op)` with placeholders named by `batches`' keys.

    `batches(step)` returns the feed dict of one step. Compares every variable after k steps and
    the gradient of the loss w.r.t. the trainable variables before the first step. `step_error`:
    the train_op must instead raise a GraphError matching it (jax.grad is still compared).
    """
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(0)
        loss, train_op = build(tf)
        trainable = tf.compat.v1.trainable_variables()
        grads = [tf.convert_to_tensor(t) for t in tf.compat.v1.gradients(loss, trainable)]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        tf_vars = tf.compat.v1.global_variables() + tf.compat.v1.local_variables()
        read = {v.op.name: v.read_value() if hasattr(v, "read_value") else v for v in tf_vars}
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.variables_initializer(tf_vars))
            before = sess.run(read)

            def feed_dict(step):
                return {g.get_tensor_by_name(name): value for name, value in batches(step).items()}

            want_grads = sess.run(grads, feed_dict(0))
            want_losses = []
            for step in range(k):
                want_losses.append(sess.run([loss, train_op], feed_dict(step))[0])
            after = sess.run(read)
    graph = jaxmeta.import_meta_graph(meta)
    feed_names = list(batches(0))

    # (a) the graph's own train_op, jitted with donated variables
    step_fn = jax.jit(graph.step(loss.name, feeds=feed_names, targets=[train_op.name]), donate_argnums=0)
    variables = {name: jnp.asarray(value) for name, value in before.items()}
    if step_error is not None:
        with pytest.raises(jaxmeta.GraphError, match=step_error):
            step_fn(variables, *batches(0).values())
        k = 0
    for step in range(k):
        got_loss, variables = step_fn(variables, *batches(step).values())
        assert_close(got_loss, want_losses[step], rtol=rtol, atol=atol, what=f"loss at step {step}")
    assert step_error is not None or set(variables) == set(after)
    for name, want in after.items() if step_error is None else ():
        assert_close(variables[name], want, rtol=rtol, atol=atol, what=f"variable {name} after {k} steps")

    if not grads:
        return
    # (b) jax.grad of the loss w.r.t. the trainable variables
    loss_fn = graph.function(loss.name, feeds=feed_names)
    names = [v.op.name for v in trainable]
    start = {name: jnp.asarray(value) for name, value in before.items()}

    def loss_of(train_vars):
        return loss_fn({**start, **train_vars}, *batches(0).values())

    got_grads = jax.jit(jax.grad(loss_of))({n: start[n] for n in names})
    for name, want in zip(names, want_grads):
        assert_close(got_grads[name], want, rtol=grad_rtol, atol=grad_atol, what=f"d loss / d {name}")


def _images(shape, classes, seed=0):
    def batches(step):
        rng = np.random.default_rng(seed + step)
        return {
            "x:0": rng.standard_normal(shape).astype(np.float32),
            "labels:0": rng.integers(0, classes, shape[0]).astype(np.int32),
        }

    return batches


@pytest.mark.parametrize("resource", [False, True], ids=["ref", "resource"])
def test_sgd_mlp(resource):
    def build(tf):
        tf.compat.v1.get_variable_scope().set_use_resource(resource)
        x = tf.compat.v1.placeholder(tf.float32, [8, 5], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [8], name="labels")
        h = tf.compat.v1.layers.dense(x, 16, activation=tf.nn.relu)
        h = tf.compat.v1.layers.dense(h, 8, activation=tf.nn.tanh)
        logits = tf.compat.v1.layers.dense(h, 3)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        step = tf.compat.v1.train.get_or_create_global_step()
        return loss, tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)

    check_training(build, _images((8, 5), 3))


def _cnn(tf, x, labels, training=True):
    """conv -> batch norm -> relu -> max pool -> conv -> avg pool -> dense, with UPDATE_OPS."""
    h = tf.compat.v1.layers.conv2d(x, 4, 3, padding="same", use_bias=False)
    h = tf.compat.v1.layers.batch_normalization(h, training=training, momentum=0.9)
    h = tf.nn.relu(h)
    h = tf.compat.v1.layers.max_pooling2d(h, 2, 2)
    # No conv bias before batch norm: its gradient is zero up to rounding, which Adam would
    # amplify into steps that only reflect float noise.
    h = tf.compat.v1.layers.conv2d(h, 6, 3, strides=1, padding="valid", use_bias=False)
    h = tf.nn.elu(tf.compat.v1.layers.batch_normalization(h, training=training, momentum=0.8))
    h = tf.compat.v1.layers.average_pooling2d(h, 2, 1, padding="same")
    logits = tf.compat.v1.layers.dense(tf.compat.v1.layers.flatten(h), 3)
    onehot = tf.one_hot(labels, 3)
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=logits))


@pytest.mark.parametrize("resource", [False, True], ids=["ref", "resource"])
@pytest.mark.parametrize("opt", ["momentum", "adam"])
def test_cnn_with_batch_norm_update_ops(opt, resource):
    def build(tf):
        tf.compat.v1.get_variable_scope().set_use_resource(resource)
        x = tf.compat.v1.placeholder(tf.float32, [4, 8, 8, 2], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [4], name="labels")
        loss = _cnn(tf, x, labels)
        step = tf.compat.v1.train.get_or_create_global_step()
        # Adam's first steps are ~lr * sign(grad): a larger epsilon keeps gradient entries that are
        # rounding noise (TF's threaded reductions vary run to run) from becoming full steps.
        optimizer = (tf.compat.v1.train.MomentumOptimizer(0.05, 0.9, use_nesterov=True) if opt == "momentum"
                     else tf.compat.v1.train.AdamOptimizer(0.01, epsilon=1e-3))
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(update_ops):
            train_op = optimizer.minimize(loss, global_step=step)
        return loss, train_op

    check_training(build, _images((4, 8, 8, 2), 3), rtol=2e-4, atol=2e-5, grad_rtol=2e-4, grad_atol=2e-5)


def test_cnn_with_fractional_pools():
    """Graham's fractional pools at integer ratios (their boundaries then fixed, as TF draws them):
    FractionalMaxPoolGrad and FractionalAvgPoolGrad in TF's train_op, ReLU ties included."""

    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [4, 12, 12, 2], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [4], name="labels")
        h = tf.nn.relu(tf.compat.v1.layers.conv2d(x, 4, 3, padding="same"))
        h, _, _ = tf.compat.v1.nn.fractional_max_pool(h, [1.0, 2.0, 2.0, 1.0], overlapping=True)
        h = tf.nn.relu(tf.compat.v1.layers.conv2d(h, 6, 3, padding="same"))
        h, _, _ = tf.compat.v1.nn.fractional_avg_pool(h, [1.0, 3.0, 2.0, 1.0], pseudo_random=True, overlapping=True)
        logits = tf.compat.v1.layers.dense(tf.compat.v1.layers.flatten(h), 3)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        return loss, tf.compat.v1.train.MomentumOptimizer(0.05, 0.9).minimize(loss)

    check_training(build, _images((4, 12, 12, 2), 3))


def test_batch_norm_mode_from_placeholder():
    """`training` is a bool placeholder (default True): batch norm goes through tf.cond (v1
    Switch/Merge), and its moving-average updates only happen in training mode."""

    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [4, 8, 8, 2], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [4], name="labels")
        training = tf.compat.v1.placeholder_with_default(True, [], name="training")
        loss = _cnn(tf, x, labels, training=training)
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(update_ops):
            train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        return loss, train_op

    check_training(build, _images((4, 8, 8, 2), 3), rtol=2e-4, atol=2e-5, grad_rtol=2e-4, grad_atol=2e-5)

    def inference(step):
        return {**_images((4, 8, 8, 2), 3)(step), "training:0": np.bool_(False)}

    check_training(build, inference, rtol=2e-4, atol=2e-5, grad_rtol=2e-4, grad_atol=2e-5)


@pytest.mark.parametrize("opt", ["rmsprop", "rmsprop_centered", "adagrad", "adadelta", "ftrl", "proximal_adagrad"])
def test_mlp_other_optimizers(opt):
    optimizers = {
        "rmsprop": lambda tf: tf.compat.v1.train.RMSPropOptimizer(0.01, momentum=0.9),
        "rmsprop_centered": lambda tf: tf.compat.v1.train.RMSPropOptimizer(0.01, centered=True),
        "adagrad": lambda tf: tf.compat.v1.train.AdagradOptimizer(0.1),
        "adadelta": lambda tf: tf.compat.v1.train.AdadeltaOptimizer(1.0),
        "ftrl": lambda tf: tf.compat.v1.train.FtrlOptimizer(0.1, l1_regularization_strength=0.001),
        "proximal_adagrad": lambda tf: tf.compat.v1.train.ProximalAdagradOptimizer(0.1, l2_regularization_strength=0.01),
    }

    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [8, 5], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [8], name="labels")
        h = tf.compat.v1.layers.dense(x, 10, activation=tf.nn.sigmoid)
        logits = tf.compat.v1.layers.dense(h, 3)
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
        step = tf.compat.v1.train.get_or_create_global_step()
        return loss, optimizers[opt](tf).minimize(loss, global_step=step)

    check_training(build, _images((8, 5), 3))


@pytest.mark.parametrize("resource", [False, True], ids=["ref", "resource"])
@pytest.mark.parametrize("opt", ["adagrad", "momentum", "adam", "ftrl"])
def test_embedding_sparse_updates(opt, resource):
    optimizers = {
        "adagrad": lambda tf: tf.compat.v1.train.AdagradOptimizer(0.5),
        "momentum": lambda tf: tf.compat.v1.train.MomentumOptimizer(0.1, 0.9),
        "adam": lambda tf: tf.compat.v1.train.AdamOptimizer(0.05),  # sparse Adam: gather/scatter ops
        "ftrl": lambda tf: tf.compat.v1.train.FtrlOptimizer(0.5),
    }

    def build(tf):
        tf.compat.v1.get_variable_scope().set_use_resource(resource)
        ids = tf.compat.v1.placeholder(tf.int32, [6, 4], name="ids")
        labels = tf.compat.v1.placeholder(tf.float32, [6], name="labels")
        table = tf.compat.v1.get_variable("table", [20, 5], initializer=tf.compat.v1.random_normal_initializer())
        emb = tf.reduce_mean(tf.nn.embedding_lookup(table, ids), axis=1)
        pred = tf.squeeze(tf.compat.v1.layers.dense(emb, 1), -1)
        loss = tf.reduce_mean(tf.square(pred - labels))
        step = tf.compat.v1.train.get_or_create_global_step()
        return loss, optimizers[opt](tf).minimize(loss, global_step=step)

    def batches(step):
        rng = np.random.default_rng(step)
        ids = rng.integers(0, 20, (6, 4)).astype(np.int32)
        ids[0, :2] = 7  # repeated ids within a batch: the optimizer sums them first
        return {"ids:0": ids, "labels:0": rng.standard_normal(6).astype(np.float32)}

    check_training(build, batches)


def test_gradient_clipping_and_global_step():
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [8, 5], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [8], name="labels")
        h = tf.compat.v1.layers.dense(x, 12, activation=tf.nn.softplus)
        logits = tf.compat.v1.layers.dense(h, 3)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)) * 20.0
        step = tf.compat.v1.train.get_or_create_global_step()
        opt = tf.compat.v1.train.MomentumOptimizer(0.1, 0.9)
        grads_and_vars = opt.compute_gradients(loss)
        grads, variables = zip(*grads_and_vars)
        clipped, _ = tf.clip_by_global_norm(grads, 1.0)
        train_op = opt.apply_gradients(zip(clipped, variables), global_step=step)
        return loss, train_op

    check_training(build, _images((8, 5), 3))


@pytest.mark.parametrize("resource", [False, True], ids=["ref", "resource"])
def test_exponential_moving_average_and_group(resource):
    # With ref variables, the averages read `var/read` (made before the update) after minimize:
    # TF's Identity aliases the buffer ApplyAdam updates in place, so they see the new weights.
    def build(tf):
        tf.compat.v1.get_variable_scope().set_use_resource(resource)
        x = tf.compat.v1.placeholder(tf.float32, [8, 5], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [8], name="labels")
        logits = tf.compat.v1.layers.dense(tf.compat.v1.layers.dense(x, 6, activation=tf.nn.relu6), 3)
        loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
        step = tf.compat.v1.train.get_or_create_global_step()
        minimize = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
        ema = tf.compat.v1.train.ExponentialMovingAverage(0.9, num_updates=step)
        with tf.control_dependencies([minimize]):
            averages = ema.apply(tf.compat.v1.trainable_variables())
        return loss, tf.group(minimize, averages)

    check_training(build, _images((8, 5), 3))


OPTIMIZERS = {
    "sgd": lambda tf: tf.compat.v1.train.GradientDescentOptimizer(0.1),
    "momentum": lambda tf: tf.compat.v1.train.MomentumOptimizer(0.1, 0.9),
    "nesterov": lambda tf: tf.compat.v1.train.MomentumOptimizer(0.1, 0.9, use_nesterov=True),
    "adam": lambda tf: tf.compat.v1.train.AdamOptimizer(0.01),
    "rmsprop": lambda tf: tf.compat.v1.train.RMSPropOptimizer(0.01, momentum=0.5),
    "rmsprop_centered": lambda tf: tf.compat.v1.train.RMSPropOptimizer(0.01, momentum=0.5, centered=True),
    "adagrad": lambda tf: tf.compat.v1.train.AdagradOptimizer(0.1),
    "adagrad_da": lambda tf: tf.compat.v1.train.AdagradDAOptimizer(
        0.1, tf.compat.v1.train.get_or_create_global_step(), l1_regularization_strength=0.01),
    "proximal_adagrad": lambda tf: tf.compat.v1.train.ProximalAdagradOptimizer(0.1, l1_regularization_strength=0.01),
    "proximal_sgd": lambda tf: tf.compat.v1.train.ProximalGradientDescentOptimizer(0.1, l2_regularization_strength=0.1),
    "adadelta": lambda tf: tf.compat.v1.train.AdadeltaOptimizer(1.0),
    "ftrl": lambda tf: tf.compat.v1.train.FtrlOptimizer(0.1, l1_regularization_strength=0.01),
    "ftrl_v2": lambda tf: tf.compat.v1.train.FtrlOptimizer(0.1, l2_shrinkage_regularization_strength=0.01),
}


@pytest.mark.parametrize("resource,sparse", [(False, False), (True, True)], ids=["ref-dense", "resource-sparse"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_minimize(opt, resource, sparse):
    """Every TF1 optimizer's own update ops on a tiny loss, dense and sparse (gathered) gradients
    (tests/ops/test_training.py covers every op in both forms)."""

    def build(tf):
        tf.compat.v1.get_variable_scope().set_use_resource(resource)
        w = tf.compat.v1.get_variable("w", initializer=np.float32(np.linspace(-1, 1, 15).reshape(5, 3)))
        b = tf.compat.v1.get_variable("b", initializer=np.float32([0.1, -0.2, 0.3]))
        xs = tf.compat.v1.placeholder(tf.float32, [6, 3], name="x")
        rows = tf.gather(w, [0, 2, 4, 2, 1, 0]) if sparse else tf.matmul(xs, w[:3])
        loss = tf.reduce_sum(tf.square(xs * rows + b - 1.0))
        step = tf.compat.v1.train.get_or_create_global_step()
        return loss, OPTIMIZERS[opt](tf).minimize(loss, global_step=step)

    def batches(step):
        return {"x:0": np.random.default_rng(step).standard_normal((6, 3)).astype(np.float32)}

    check_training(build, batches, grads=False)


# -- training graphs whose gradients are TF's special gradient kernels ----------------------------


def _var(tf, name, shape, seed, scale=0.3):
    init = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale
    return tf.compat.v1.get_variable(name, initializer=init)


def test_block_lstm_training():
    """LSTMBlockFusedCell's kernel (`BlockLSTM`, peepholes on, no clip): the train_op holds
    `BlockLSTMGrad`."""
    time, batch, inp, cell = 5, 3, 4, 6

    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [time, batch, inp], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [batch], name="labels")
        w, b = _var(tf, "w", [inp + cell, 4 * cell], 1), _var(tf, "b", [4 * cell], 2)
        wci, wcf, wco = (_var(tf, n, [cell], 3 + i) for i, n in enumerate(("wci", "wcf", "wco")))
        zeros = tf.zeros([batch, cell])
        outs = tf.raw_ops.BlockLSTM(seq_len_max=tf.constant(time, tf.int64), x=x, cs_prev=zeros, h_prev=zeros, w=w,
                                    wci=wci, wcf=wcf, wco=wco, b=b, forget_bias=1.0, cell_clip=-1.0,
                                    use_peephole=True)
        logits = tf.compat.v1.layers.dense(outs[6][-1], 3)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train_op = tf.compat.v1.train.AdamOptimizer(0.01, epsilon=1e-3).minimize(loss)
        assert "BlockLSTMGrad" in {op.type for op in tf.compat.v1.get_default_graph().get_operations()}
        return loss, train_op

    def batches(step):
        rng = np.random.default_rng(step)
        return {"x:0": rng.standard_normal((time, batch, inp)).astype(np.float32),
                "labels:0": rng.integers(0, 3, batch).astype(np.int32)}

    check_training(build, batches)


def test_quantization_aware_training():
    """Fake-quantized weights and activations with trained ranges (contrib.quantize's pattern):
    the train_op holds `FakeQuantWithMinMaxVarsGradient` and its per-channel twin."""

    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [8, 5], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [8], name="labels")
        w = _var(tf, "w", [5, 4], 1, scale=0.5)
        w_lo, w_hi = (tf.compat.v1.get_variable(n, initializer=np.float32([v] * 4)) for n, v in
                      (("w_min", -0.6), ("w_max", 0.7)))
        a_lo = tf.compat.v1.get_variable("act_min", initializer=np.float32(-1.5))
        a_hi = tf.compat.v1.get_variable("act_max", initializer=np.float32(1.8))
        wq = tf.quantization.fake_quant_with_min_max_vars_per_channel(w, w_lo, w_hi, num_bits=4, narrow_range=True)
        h = tf.quantization.fake_quant_with_min_max_vars(tf.matmul(x, wq), a_lo, a_hi)
        logits = tf.compat.v1.layers.dense(h, 3)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        return loss, tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)

    check_training(build, _images((8, 5), 3))


def test_crop_and_resize_and_argmax_pool_training():
    """ROI crops of a trained feature map at trained boxes (Faster R-CNN's pattern) after a max pool
    with argmax: the train_op holds `CropAndResizeGradImage`, `CropAndResizeGradBoxes` and
    `MaxPoolGradWithArgmax`."""

    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [2, 10, 10, 2], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [3], name="labels")
        h = tf.compat.v1.layers.conv2d(x, 3, 3, padding="same", activation=tf.nn.relu)
        h, _ = tf.nn.max_pool_with_argmax(h, 2, 2, "SAME")
        boxes = tf.sigmoid(_var(tf, "box_logits", [3, 4], 7, scale=1.0))
        crops = tf.image.crop_and_resize(h, boxes, tf.constant([0, 1, 1]), [3, 3])
        logits = tf.compat.v1.layers.dense(tf.compat.v1.layers.flatten(crops), 3)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train_op = tf.compat.v1.train.MomentumOptimizer(0.05, 0.9).minimize(loss)
        types = {op.type for op in tf.compat.v1.get_default_graph().get_operations()}
        assert {"CropAndResizeGradImage", "CropAndResizeGradBoxes", "MaxPoolGradWithArgmax"} <= types
        return loss, train_op

    def batches(step):
        rng = np.random.default_rng(step)
        return {"x:0": rng.standard_normal((2, 10, 10, 2)).astype(np.float32),
                "labels:0": rng.integers(0, 3, 3).astype(np.int32)}

    check_training(build, batches)


def test_ctc_training():
    """A time-major CTC model (DeepSpeech's pattern): the train_op multiplies `CTCLoss`'s gradient
    output into the logits' gradient."""
    time, batch, feat, classes = 7, 3, 4, 5

    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [time, batch, feat], name="x")
        idx = tf.compat.v1.placeholder(tf.int64, [None, 2], name="idx")
        vals = tf.compat.v1.placeholder(tf.int32, [None], name="vals")
        lengths = tf.compat.v1.placeholder(tf.int32, [batch], name="lengths")
        logits = tf.compat.v1.layers.dense(x, classes)
        labels = tf.SparseTensor(idx, vals, tf.constant([batch, time], tf.int64))
        loss = tf.reduce_mean(tf.compat.v1.nn.ctc_loss(labels, logits, lengths))
        return loss, tf.compat.v1.train.AdamOptimizer(0.01, epsilon=1e-3).minimize(loss)

    def batches(step):
        rng = np.random.default_rng(step)
        labels = [[1, 2, 2], [3], [0, 1]]
        return {"x:0": rng.standard_normal((time, batch, feat)).astype(np.float32),
                "idx:0": np.int64([(b, j) for b, lab in enumerate(labels) for j in range(len(lab))]),
                "vals:0": np.int32([v for lab in labels for v in lab]),
                "lengths:0": np.int32([7, 5, 6])}

    check_training(build, batches)


@pytest.mark.parametrize("resource", [False, True], ids=["ref", "resource"])
def test_sliced_assignment_in_train_op(resource):
    """TF1's `var[...].assign(...)` (`StridedSliceAssign` / `ResourceStridedSliceAssign`) grouped
    with the optimizer's update: every other row of `w` is shrunk after each step."""

    def build(tf):
        tf.compat.v1.get_variable_scope().set_use_resource(resource)
        x = tf.compat.v1.placeholder(tf.float32, [8, 5], name="x")
        labels = tf.compat.v1.placeholder(tf.int32, [8], name="labels")
        w = _var(tf, "w", [5, 3], 1)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=tf.matmul(x, w)))
        minimize = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        with tf.control_dependencies([minimize]):
            shrink = w[::2, 1:].assign(w[::2, 1:] * 0.5)
        return loss, tf.group(shrink)

    check_training(build, _images((8, 5), 3))


def _text_steps(tf, g, fetches, train, batches):
    """Trains `g` one step per batch (a dict of feeds, by tensor name) in TF and in jaxmeta's Session
    from the same initial variables (a table initializer run in both); returns TF's and jaxmeta's
    fetches per step and TF's and jaxmeta's variables after the last."""
    v1 = tf.compat.v1
    with g.as_default():
        meta = v1.train.export_meta_graph(graph=g)
        with v1.Session(graph=g) as sess:
            sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
            start = {v.op.name: sess.run(v) for v in v1.global_variables()}
            want = [sess.run([*fetches, train], feeds)[:-1] for feeds in batches]
            after = {v.op.name: sess.run(v) for v in v1.global_variables()}
    graph = jaxmeta.import_meta_graph(meta)
    names = [t.name for t in fetches] + [train.name]
    with jaxmeta.Session(graph, start) as sess:
        for init in graph.get_collection("table_initializer"):
            assert sess.run(init.name) is None
        got = [sess.run(names, feeds)[:-1] for feeds in batches]
        return want, got, after, sess.variables


def test_text_classifier_from_raw_strings():
    """A TF1 text model end to end: fed sentences -> string_split -> vocabulary table with OOV
    buckets -> embedding_lookup_sparse -> Adam, with merged summaries. jaxmeta's Session runs it in
    stages by itself (strings on the host, the rest jitted) and must match TF's variables and
    summaries."""
    tf = get_tf()
    from tensorflow.python.ops import lookup_ops

    from jaxmeta.proto import summary_pb2

    vocab = ["the", "cat", "sat", "on", "mat", "dog", "ran"]
    batches = [
        (["the cat sat", "a dog ran on the mat", "cat", "zebra zebra the"], [0, 1, 0, 2]),
        (["dog", "the mat sat on the cat", "ran ran", "unknown words here"], [1, 0, 1, 2]),
        (["mat cat dog", "the", "on on on", "sat the dog"], [0, 2, 1, 1]),
    ]
    g = tf.Graph()
    with g.as_default():
        v1 = tf.compat.v1
        text = v1.placeholder(tf.string, [None], name="text")
        labels = v1.placeholder(tf.int32, [None], name="labels")
        table = lookup_ops.index_table_from_tensor(tf.constant(vocab), num_oov_buckets=2)
        ids = table.lookup(v1.string_split(text))
        emb = v1.get_variable("emb", [len(vocab) + 2, 6], initializer=v1.random_normal_initializer(seed=1))
        w = v1.get_variable("w", [6, 3], initializer=v1.random_normal_initializer(seed=2))
        logits = tf.matmul(tf.nn.embedding_lookup_sparse(emb, ids, None, combiner="mean"), w)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        v1.summary.scalar("loss", loss)
        v1.summary.histogram("emb", emb)
        merged = v1.summary.merge_all()
        train = v1.train.AdamOptimizer(0.05).minimize(loss)
    want, got, after, variables = _text_steps(tf, g, [loss, merged], train,
                                              [{"text:0": t, "labels:0": y} for t, y in batches])
    for step, ((got_loss, got_summary), (want_loss, want_summary)) in enumerate(zip(got, want)):
        assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6, what=f"loss at step {step}")
        ours, theirs = (summary_pb2.Summary.FromString(s) for s in (got_summary, want_summary))
        assert [v.tag for v in ours.value] == [v.tag for v in theirs.value] == ["loss", "emb_1"]
        assert ours.value[0].simple_value == pytest.approx(theirs.value[0].simple_value, rel=1e-5)
        assert ours.value[1].histo.num == theirs.value[1].histo.num == (len(vocab) + 2) * 6
    for name, value in after.items():
        assert_close(variables[name], value, rtol=1e-4, atol=1e-5, what=f"variable {name} after 3 steps")


def test_padded_word_ids_from_ragged_split():
    """TF 1.15's text idiom: `tf.strings.split(text).to_tensor()` pads each line's words into a
    matrix (RaggedTensorToTensor on strings), a vocabulary maps them to ids, a masked mean of
    embeddings feeds a classifier trained with Adam. jaxmeta's Session must leave TF's variables."""
    tf = get_tf()
    from tensorflow.python.ops import lookup_ops

    vocab = ["<pad>", "the", "cat", "sat", "on", "mat", "dog"]
    batches = [
        (["the cat sat", "a dog on the mat", "cat"], [0, 1, 0]),
        (["dog dog", "the mat sat on the cat", "unknown"], [1, 0, 1]),
    ]
    g = tf.Graph()
    with g.as_default():
        v1 = tf.compat.v1
        text = v1.placeholder(tf.string, [None], name="text")
        labels = v1.placeholder(tf.int32, [None], name="labels")
        words = tf.strings.split(text).to_tensor(default_value="<pad>")
        ids = lookup_ops.index_table_from_tensor(tf.constant(vocab), num_oov_buckets=1).lookup(words)
        mask = tf.cast(tf.not_equal(ids, 0), tf.float32)[..., None]
        emb = v1.get_variable("emb", [len(vocab) + 1, 4], initializer=v1.random_normal_initializer(seed=3))
        mean = tf.reduce_sum(tf.nn.embedding_lookup(emb, ids) * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)
        w = v1.get_variable("w", [4, 2], initializer=v1.random_normal_initializer(seed=4))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=mean @ w))
        train = v1.train.AdamOptimizer(0.1).minimize(loss)
    want, got, after, variables = _text_steps(tf, g, [loss, words], train,
                                              [{"text:0": t, "labels:0": y} for t, y in batches])
    for step, ((got_loss, got_words), (want_loss, want_words)) in enumerate(zip(got, want)):
        assert got_words.tolist() == want_words.tolist(), f"padded words at step {step}"
        assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6, what=f"loss at step {step}")
    for name, value in after.items():
        assert_close(variables[name], value, rtol=1e-4, atol=1e-5, what=f"variable {name} after 2 steps")


def test_serving_graph_trains_from_serialized_examples():
    """An Estimator-era graph reads serialized tf.train.Examples (`tf.parse_example`: dense floats, a
    string with a default through a vocabulary table, the label) and trains with Adam. jaxmeta's
    Session trains it from the same serialized batches and must leave TF's variables; the model
    behind the parser jits when the parser's outputs are fed instead."""
    tf = get_tf()
    from tensorflow.python.ops import lookup_ops

    v1 = tf.compat.v1
    colors = ["red", "green", "blue", "mauve"]
    rng = np.random.default_rng(1)

    def serialize(i):
        feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=rng.standard_normal(3))),
                   "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))}
        if i % 3:
            feature["color"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[colors[i % 4].encode()]))
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    batches = [{"examples:0": np.array([serialize(i) for i in range(k, k + 4)], object)} for k in (0, 4, 8)]
    g = tf.Graph()
    with g.as_default():
        examples = v1.placeholder(tf.string, [None], name="examples")
        parsed = v1.parse_example(examples, {"x": v1.FixedLenFeature([3], tf.float32),
                                             "color": v1.FixedLenFeature([], tf.string, default_value="none"),
                                             "label": v1.FixedLenFeature([], tf.int64)})
        ids = lookup_ops.index_table_from_tensor(tf.constant(colors[:3]), num_oov_buckets=1).lookup(parsed["color"])
        emb = v1.get_variable("emb", [4, 2], initializer=v1.random_normal_initializer(seed=6))
        w = v1.get_variable("w", [5, 2], initializer=v1.random_normal_initializer(seed=7))
        logits = tf.concat([parsed["x"], tf.nn.embedding_lookup(emb, ids)], 1) @ w
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=parsed["label"], logits=logits))
        train = v1.train.AdamOptimizer(0.1).minimize(loss)
    want, got, after, variables = _text_steps(tf, g, [loss, logits], train, batches)
    for step, ((got_loss, got_logits), (want_loss, want_logits)) in enumerate(zip(got, want)):
        assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6, what=f"loss at step {step}")
        assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-6, what=f"logits at step {step}")
    for name, value in after.items():
        assert_close(variables[name], value, rtol=1e-4, atol=1e-5, what=f"variable {name} after 3 steps")
    with g.as_default():
        graph = jaxmeta.import_meta_graph(v1.train.export_meta_graph(graph=g))
    host = graph.function([logits.name, parsed["x"].name, ids.name], feeds=["examples:0"])
    with jaxmeta.Session(graph, variables) as sess:  # the table's initializer
        sess.run(graph.get_collection("table_initializer")[0].name)
        want_logits, x, color_ids = host(sess.variables, batches[0]["examples:0"])
    jitted = jax.jit(graph.function(logits.name, feeds=[parsed["x"].name, ids.name]))
    assert_close(jitted(variables, x, color_ids), want_logits, rtol=1e-6, atol=1e-6, what="jitted logits")


def test_csv_lines_train_a_regression():
    """TF1's CSV idiom: fed lines -> `tf.decode_csv` (quoted fields, NA values, defaults) -> a linear
    regression trained with momentum; jaxmeta's Session must leave TF's variables."""
    tf = get_tf()
    v1 = tf.compat.v1
    batches = [
        {"lines:0": np.array([b'1.5,2,-1,"a, b",3.0', b"0.5,NA,2,c,1.0", b"-1,1,,d,-2.5"], object)},
        {"lines:0": np.array([b'2,2,2,"""q""",4', b"0,0,1,e,0.5", b" 3 ,-1,0.5,f,2"], object)},
    ]
    g = tf.Graph()
    with g.as_default():
        lines = v1.placeholder(tf.string, [None], name="lines")
        *xs, tag, y = v1.decode_csv(lines, [[0.0], [0.0], [0.25], ["?"], [0.0]], na_value="NA")
        w = v1.get_variable("w", [3, 1], initializer=v1.random_normal_initializer(seed=8))
        pred = tf.stack(xs, 1) @ w + tf.cast(tf.strings.length(tag), tf.float32)[:, None] * 0.0
        loss = tf.reduce_mean(tf.square(pred[:, 0] - y))
        train = v1.train.MomentumOptimizer(0.05, 0.9).minimize(loss)
    want, got, after, variables = _text_steps(tf, g, [loss, tag], train, batches)
    for step, ((got_loss, got_tag), (want_loss, want_tag)) in enumerate(zip(got, want)):
        assert got_tag.tolist() == want_tag.tolist(), f"tags at step {step}"
        assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6, what=f"loss at step {step}")
    for name, value in after.items():
        assert_close(variables[name], value, rtol=1e-5, atol=1e-6, what=f"variable {name} after 2 steps")


def test_queue_input_pipeline_trains_from_fed_batches():
    """A 2016-era TF1 training graph reads its batches from queues (`slice_input_producer`,
    `tf.train.batch`, run by QueueRunner threads). jaxmeta never runs queues; the TF1 habit of
    feeding the dequeued batch works, and the error without feeds names the tensors to feed."""
    tf = get_tf()
    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    data = rng.standard_normal((20, 3)).astype(np.float32), rng.integers(0, 2, 20).astype(np.int32)
    batches = [(data[0][i:i + 4], data[1][i:i + 4]) for i in (0, 4, 8)]
    g = tf.Graph()
    with g.as_default():
        x, y = v1.train.slice_input_producer([tf.constant(data[0]), tf.constant(data[1])], shuffle=False)
        bx, by = v1.train.batch([x, y], batch_size=4)
        w = v1.get_variable("w", [3, 2], initializer=v1.random_normal_initializer(seed=5))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=by, logits=bx @ w))
        train = v1.train.MomentumOptimizer(0.1, 0.9).minimize(loss)
        meta = v1.train.export_meta_graph(graph=g)
        with v1.Session(graph=g) as sess:  # no QueueRunners started: every batch is fed
            sess.run(v1.global_variables_initializer())
            start = {v.op.name: sess.run(v) for v in v1.global_variables()}
            want = [sess.run([loss, train], {bx: a, by: b})[0] for a, b in batches]
            after = {v.op.name: sess.run(v) for v in v1.global_variables()}
    graph = jaxmeta.import_meta_graph(meta)
    assert (bx.name, by.name) == ("batch:0", "batch:1")
    with pytest.raises(jaxmeta.SideEffectError, match=r"reads batch:0, batch:1: feed those instead"):
        graph.function(loss.name)
    with jaxmeta.Session(graph, start) as sess:
        got = [sess.run([loss.name, train.name], {"batch:0": a, "batch:1": b})[0] for a, b in batches]
        variables = sess.variables
    assert_close(np.array(got), np.array(want), rtol=1e-5, atol=1e-6, what="losses")
    for name, value in after.items():
        assert_close(variables[name], value, rtol=1e-5, atol=1e-6, what=f"variable {name} after 3 steps")


def test_wide_and_deep_feature_columns():
    """TF1 feature columns end to end: hashed categorical columns, an embedding column (safe sparse
    lookup), a crossed column (SparseCross) and a numeric column, from fed strings and floats,
    trained with Adagrad; jaxmeta's Session must leave TF's variables."""
    tf = get_tf()
    rng = np.random.default_rng(5)
    colors, shapes = ["red", "green", "blue", "teal"], ["circle", "square", "star"]

    def batch(step):
        r = np.random.default_rng(step)
        return {"color:0": np.array([[colors[i]] for i in r.integers(0, 4, 8)], object),
                "shape:0": np.array([[shapes[i]] for i in r.integers(0, 3, 8)], object),
                "size:0": r.standard_normal((8, 1)).astype(np.float32),
                "label:0": r.integers(0, 2, (8, 1)).astype(np.float32)}

    g = tf.Graph()
    with g.as_default():
        v1, fc = tf.compat.v1, tf.compat.v1.feature_column
        tf.compat.v1.set_random_seed(int(rng.integers(100)))
        feats = {"color": v1.placeholder(tf.string, [None, 1], name="color"),
                 "shape": v1.placeholder(tf.string, [None, 1], name="shape"),
                 "size": v1.placeholder(tf.float32, [None, 1], name="size")}
        label = v1.placeholder(tf.float32, [None, 1], name="label")
        color = fc.categorical_column_with_hash_bucket("color", 11)
        shape = fc.categorical_column_with_vocabulary_list("shape", shapes)
        columns = [fc.embedding_column(color, 4), fc.indicator_column(shape), fc.numeric_column("size"),
                   fc.indicator_column(fc.crossed_column(["color", "shape"], 17))]
        net = fc.input_layer(feats, columns)
        w = v1.get_variable("w", [net.shape[1], 1], initializer=v1.random_normal_initializer(seed=3))
        logits = tf.matmul(net, w)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=logits))
        train = v1.train.AdagradOptimizer(0.3).minimize(loss)
        meta = v1.train.export_meta_graph(graph=g)
        with v1.Session(graph=g) as sess:
            sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
            start = {v.op.name: sess.run(v) for v in v1.global_variables()}
            want_losses = [sess.run([loss, train], {g.get_tensor_by_name(k): v for k, v in batch(s).items()})[0]
                           for s in range(K)]
            after = {v.op.name: sess.run(v) for v in v1.global_variables()}
    graph = jaxmeta.import_meta_graph(meta)
    with jaxmeta.Session(graph, start) as sess:
        for step in range(K):
            got = sess.run([loss.name, train.name], batch(step))[0]
            assert_close(got, want_losses[step], rtol=1e-5, atol=1e-6, what=f"loss at step {step}")
        variables = sess.variables
    for name, value in after.items():
        assert_close(variables[name], value, rtol=1e-4, atol=1e-5, what=f"variable {name} after {K} steps")


# -- models with loops and conds, in TF1's control flow and in TF 2's ------------------------------
# TF 2's is what `tf.compat.v1` graphs get without `disable_v2_behavior()`: conds and loops as
# functional If/While ops whose bodies name outputs by argument (a batch norm's
# `FusedBatchNormV3:batch_mean` inside an If), gradients as While loops that pop the forward
# loop's intermediates from TensorLists (some static: list lengths, shapes; conds' optionals, which
# differ between branches), `ZerosLike` of optionals and lists.


def _bn_from_placeholder(tf):
    x = tf.compat.v1.placeholder(tf.float32, [3, 6, 4], name="x")
    labels = tf.compat.v1.placeholder(tf.int32, [3], name="labels")
    training = tf.compat.v1.placeholder_with_default(True, [], name="training")
    loss = _cnn(tf, tf.pad(x[..., None], [[0, 0], [1, 1], [2, 2], [0, 0]]), labels, training=training)
    with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
        return loss, tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)


def _lstm_with_lengths(tf):
    x, labels = _seq(tf)
    cell = tf.compat.v1.nn.rnn_cell.LSTMCell(5, initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    _, state = tf.compat.v1.nn.dynamic_rnn(cell, x, sequence_length=tf.constant([6, 2, 4]), dtype=tf.float32)
    return _head(tf, state.h, labels)


def _gru_with_fed_lengths(tf):
    # lengths known only at run time: the forward loop's trip count is the data's (bounded by
    # maximum_iterations), and so is its gradient loop's
    x, labels = _seq(tf)
    lengths = tf.compat.v1.placeholder_with_default(tf.constant([5, 2, 4]), [3], name="lengths")
    cell = tf.compat.v1.nn.rnn_cell.GRUCell(5, kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=3))
    outputs, _ = tf.compat.v1.nn.dynamic_rnn(cell, x, sequence_length=lengths, dtype=tf.float32)
    return _head(tf, tf.reduce_sum(outputs, axis=1), labels, "momentum")


def _seq(tf):
    x = tf.compat.v1.placeholder(tf.float32, [3, 6, 4], name="x")
    labels = tf.compat.v1.placeholder(tf.int32, [3], name="labels")
    return x, labels

def _head(tf, h, labels, opt="adam"):
    logits = tf.compat.v1.layers.dense(h, 3, kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=9))
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    o = {"adam": tf.compat.v1.train.AdamOptimizer(0.01), "sgd": tf.compat.v1.train.GradientDescentOptimizer(0.1),
         "momentum": tf.compat.v1.train.MomentumOptimizer(0.1, 0.9)}[opt]
    return loss, o.minimize(loss)

def _bidirectional(tf):
    x, labels = _seq(tf)
    init = tf.compat.v1.glorot_uniform_initializer(seed=1)
    (fw, bw), _ = tf.compat.v1.nn.bidirectional_dynamic_rnn(tf.compat.v1.nn.rnn_cell.LSTMCell(4, initializer=init),
        tf.compat.v1.nn.rnn_cell.GRUCell(4, kernel_initializer=init), x, sequence_length=tf.constant([6, 3, 5]), dtype=tf.float32)
    return _head(tf, tf.reduce_mean(tf.concat([fw, bw], -1), 1), labels)

def _map_fn(tf):
    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [4, 5], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    h = tf.map_fn(lambda s: tf.reduce_max(tf.tanh(tf.matmul(s, w)), 0), x)
    return _head(tf, h, labels)

def _scan(tf):
    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [4, 4], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    h = tf.scan(lambda acc, s: tf.tanh(tf.matmul(s, w) + acc), tf.transpose(x, [1, 0, 2]), initializer=tf.zeros([3, 4]))
    return _head(tf, h[-1], labels)

def _cond_from_placeholder(tf):
    x, labels = _seq(tf)
    training = tf.compat.v1.placeholder_with_default(True, [], name="training")
    h = tf.compat.v1.layers.dense(tf.reshape(x, [3, 24]), 8, kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    h = tf.cond(training, lambda: h * 2.0 + tf.reduce_mean(h), lambda: h)
    return _head(tf, h, labels, "sgd")

def _cond_in_while(tf):
    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [4, 4], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    def body(t, h):
        xt = tf.gather(x, t, axis=1)
        return t + 1, tf.cond(tf.equal(t % 2, 0), lambda: tf.tanh(tf.matmul(xt, w) + h), lambda: tf.sigmoid(h) * 2.0)
    _, h = tf.while_loop(lambda t, h: t < 6, body, [0, tf.zeros([3, 4])])
    return _head(tf, h, labels)

def _attention_loop(tf):
    x, labels = _seq(tf)
    init = tf.compat.v1.glorot_uniform_initializer(seed=1)
    cell = tf.compat.v1.nn.rnn_cell.GRUCell(4, kernel_initializer=init)
    mem, state = tf.compat.v1.nn.dynamic_rnn(cell, x, dtype=tf.float32, scope="enc")
    dec = tf.compat.v1.nn.rnn_cell.GRUCell(4, kernel_initializer=init, name="dec")
    ta = tf.TensorArray(tf.float32, size=4)
    def body(t, s, ta):
        scores = tf.nn.softmax(tf.reduce_sum(mem * s[:, None, :], -1))
        ctxv = tf.reduce_sum(mem * scores[..., None], 1)
        o, s = dec(ctxv, s)
        return t + 1, s, ta.write(t, o)
    _, s, ta = tf.while_loop(lambda t, s, ta: t < 4, body, [0, state, ta])
    return _head(tf, tf.reduce_mean(ta.stack(), 0), labels)

def _nested(tf):
    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [4, 4], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    def body(t, h):
        xt = tf.gather(x, t, axis=1)
        inner = tf.map_fn(lambda row: tf.tanh(tf.reduce_sum(row[:, None] * w, 0)), xt + h)
        return t + 1, inner
    _, h = tf.while_loop(lambda t, h: t < 6, body, [0, tf.zeros([3, 4])])
    return _head(tf, h, labels)

def _switch_case(tf):
    x, labels = _seq(tf)
    k = tf.compat.v1.placeholder_with_default(1, [], name="k")
    h = tf.compat.v1.layers.dense(tf.reshape(x, [3, 24]), 6, kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    h = tf.switch_case(k, [lambda: tf.nn.relu(h), lambda: tf.tanh(h) * 2.0, lambda: tf.sigmoid(h)])
    return _head(tf, h, labels, "sgd")

def _manual_rnn(tf):
    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [8, 4], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    inputs = tf.TensorArray(tf.float32, size=6).unstack(tf.transpose(x, [1, 0, 2]))
    outs = tf.TensorArray(tf.float32, size=6)
    def body(t, h, outs):
        h = tf.tanh(tf.matmul(tf.concat([inputs.read(t), h], 1), w))
        return t + 1, h, outs.write(t, h)
    _, h, outs = tf.while_loop(lambda t, h, o: t < 6, body, [0, tf.zeros([3, 4]), outs])
    return _head(tf, tf.reduce_max(outs.stack(), 0) + h, labels)

def _early_stop(tf):
    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [4, 4], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    def body(t, h):
        return [t + 1, tf.tanh(tf.matmul(tf.gather(x, t % 6, axis=1), w) + h)]
    _, h = tf.while_loop(lambda t, h: tf.reduce_max(tf.abs(h)) < 0.9, body, [0, tf.zeros([3, 4])],
                         maximum_iterations=6)
    return _head(tf, h, labels)

def _tf_function(tf):
    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [4, 5], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    @tf.function
    def layer(a, w):
        top = tf.nn.top_k(a, 2)
        return tf.tanh(tf.einsum("btf,fh->bth", a, w)) + tf.reduce_mean(top.values)
    h = layer(x, w)
    return _head(tf, tf.reduce_max(h, 1), labels)

def _tf_function_loop(tf):
    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [4, 4], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    @tf.function
    def rnn(x, w):
        h = tf.zeros([3, 4])
        for t in tf.range(6):
            h = tf.tanh(tf.matmul(tf.gather(x, t, axis=1), w) + h)
        return h
    return _head(tf, rnn(x, w), labels)

def _gather_nd_cond(tf):
    x, labels = _seq(tf)
    idx = tf.compat.v1.placeholder_with_default(tf.constant([[0, 1], [2, 3], [1, 5]]), [3, 2], name="idx")
    h = tf.compat.v1.layers.dense(x, 5, kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    g = tf.gather_nd(h, idx)
    g = tf.cond(tf.reduce_sum(g) > 0, lambda: g * 2.0, lambda: tf.nn.relu(g))
    return _head(tf, g, labels)

def _defun(tf):
    # TF1's function.Defun: a layer whose function reads a variable (captured as an input) and
    # whose gradient is TF's SymbolicGradient.
    from tensorflow.python.framework import function

    x, labels = _seq(tf)
    w = tf.compat.v1.get_variable("w", [4, 5], initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))

    @function.Defun(tf.float32)
    def layer(v):
        return tf.tanh(tf.tensordot(v, w, 1)) * 1.5

    h = layer(x)
    h.set_shape([3, 6, 5])
    return _head(tf, tf.reduce_mean(h, 1), labels, "sgd")

LOOP_MODELS = {"batch_norm_from_placeholder": _bn_from_placeholder, "lstm_with_lengths": _lstm_with_lengths,
               "gru_with_fed_lengths": _gru_with_fed_lengths, "bidirectional": _bidirectional, "map_fn": _map_fn,
               "scan": _scan, "cond_from_placeholder": _cond_from_placeholder, "cond_in_while": _cond_in_while,
               "attention_loop": _attention_loop, "switch_case": _switch_case, "manual_rnn": _manual_rnn,
               "early_stop": _early_stop, "tf_function": _tf_function, "tf_function_loop": _tf_function_loop,
               "gather_nd_cond": _gather_nd_cond, "defun": _defun}


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
@pytest.mark.parametrize("name", list(LOOP_MODELS))
def test_training_through_loops_and_conds(name, v2):
    tf = get_tf()
    if v2:
        tf.compat.v1.enable_control_flow_v2()
    try:
        check_training(LOOP_MODELS[name], _images((3, 6, 4), 3), rtol=2e-4, atol=2e-5, grad_rtol=2e-4, grad_atol=2e-5)
    finally:
        tf.compat.v1.disable_control_flow_v2()


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_training_through_nested_loops(v2):
    """`tf.map_fn` inside `tf.while_loop`. TF 2's gradient graph accumulates the inner loop's lists
    per outer iteration; TF1's keeps each outer iteration's TensorArrays and stacks, pushing their
    handles onto stacks: both train as TF does."""
    tf = get_tf()
    if v2:
        tf.compat.v1.enable_control_flow_v2()
    try:
        check_training(_nested, _images((3, 6, 4), 3), rtol=2e-4, atol=2e-5, grad_rtol=2e-4, grad_atol=2e-5)
    finally:
        tf.compat.v1.disable_control_flow_v2()


def _keras_recurrent(keras, rng):
    inputs = keras.Input((6, 4), name="x")
    h = keras.layers.Conv1D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.LSTM(5, return_sequences=True, name="lstm")(h)
    h = keras.layers.GRU(4, name="gru")(h)
    return inputs, h, rng.standard_normal((8, 6, 4)).astype(np.float32)


def _keras_text(keras, rng):
    inputs = keras.Input((7,), dtype="int32", name="x")
    h = keras.layers.Embedding(20, 6, name="emb")(inputs)
    h = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="bi")(h)
    return inputs, keras.layers.GlobalMaxPooling1D()(h), rng.integers(0, 20, (8, 7)).astype(np.int32)


def _keras_image(keras, rng):
    inputs = keras.Input((10, 10, 2), name="x")
    h = keras.layers.Conv2D(4, 3, activation="relu", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.SeparableConv2D(5, 3, padding="same", name="sep")(keras.layers.MaxPooling2D()(h))
    return inputs, keras.layers.Flatten()(h), rng.standard_normal((8, 10, 10, 2)).astype(np.float32)


def _keras_sequence(keras, rng):
    inputs = keras.Input((5, 4), name="x")
    h = keras.layers.TimeDistributed(keras.layers.Dense(6, activation="tanh"), name="td")(inputs)
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.SimpleRNN(4, name="rnn")(h))
    return inputs, h, rng.standard_normal((8, 5, 4)).astype(np.float32)


def _keras_attention(keras, rng):
    inputs = keras.Input((5, 4), name="x")
    q = keras.layers.Dense(4, name="q")(inputs)
    h = keras.layers.MultiHeadAttention(2, 3, name="mha")(q, inputs)
    return inputs, keras.layers.GlobalAveragePooling1D()(h + q), rng.standard_normal((8, 5, 4)).astype(np.float32)


KERAS_MODELS = {"recurrent": _keras_recurrent, "text": _keras_text, "image": _keras_image,
                "sequence": _keras_sequence, "attention": _keras_attention}


@pytest.mark.parametrize("name", list(KERAS_MODELS))
def test_keras_model_trained_in_a_session(tmp_path, name):
    """TF1's Keras workflow: a `tf.keras` model compiled and fit in graph mode, saved with a Saver;
    jaxmeta restores it and continues training with the graph's own Keras train function (its
    update op, fed inputs, targets and the learning phase), step for step as TF. Predictions
    match too. (Attention's key bias has no gradient but float noise, which Adam would amplify:
    that model trains with SGD.)"""
    tf = get_tf()
    tf.compat.v1.disable_eager_execution()  # Keras's graph-mode (TF1) training loop
    keras = tf.compat.v1.keras
    tf.compat.v1.enable_control_flow_v2()  # Keras's recurrent layers in TF 2 (TF1's fail in TF itself)
    rng = np.random.default_rng(0)
    g = tf.Graph()
    try:
        with g.as_default(), tf.compat.v1.Session(graph=g) as sess:
            keras.backend.set_session(sess)
            inputs, h, x = KERAS_MODELS[name](keras, rng)
            y = rng.integers(0, 3, (8, 1)).astype(np.float32)
            outputs = keras.layers.Dense(3, activation="softmax", name="out")(h)
            model = keras.Model(inputs, outputs)
            if name == "attention":
                optimizer = tf.compat.v1.train.GradientDescentOptimizer(0.1)
            else:
                optimizer = tf.compat.v1.train.AdamOptimizer(0.01)
            model.compile(optimizer, "sparse_categorical_crossentropy")
            model.fit(x, y, epochs=1, batch_size=8, verbose=0)  # builds the train function
            train = model.train_function
            saver = tf.compat.v1.train.Saver()
            prefix = saver.save(sess, str(tmp_path / "keras"))
            meta = tf.compat.v1.train.export_meta_graph(graph=g, saver_def=saver.saver_def)
            predictions = model.predict(x)
            feed = {train.inputs[0]: x, train.inputs[1]: y, train.inputs[2]: True}
            losses = [sess.run([train.outputs[0], train.updates_op], feed)[0] for _ in range(K)]
            after = {v.op.name: sess.run(v) for v in tf.compat.v1.global_variables()}
    finally:
        tf.compat.v1.disable_control_flow_v2()
    graph = jaxmeta.import_meta_graph(meta)
    variables = graph.saver.restore(prefix)
    predict = jax.jit(graph.function(outputs.name, feeds=["x:0"]))
    assert_close(predict(variables, x), predictions, rtol=1e-5, atol=1e-6, what="predictions")
    step = jax.jit(graph.step(train.outputs[0].name, feeds=[t.name for t in train.inputs],
                              targets=[train.updates_op.name]), donate_argnums=0)
    for k in range(K):
        loss, variables = step(variables, x, y, np.bool_(True))
        assert_close(loss, losses[k], rtol=1e-5, atol=1e-6, what=f"loss at step {k}")
    for var_name, want in after.items():
        assert_close(variables[var_name], want, rtol=1e-4, atol=1e-5, what=f"variable {var_name} after {K} steps")


@pytest.mark.parametrize("init,mini_batch,metric", [
    ("kmeans_plus_plus", False, "squared_euclidean"),
    ("kmc2", False, "squared_euclidean"),
    ("kmeans_plus_plus", False, "cosine"),
    ("kmeans_plus_plus", True, "squared_euclidean"),
])
def test_kmeans_clustering(init, mini_batch, metric):
    """TF1's k-means (`clustering_ops.KMeans`, behind `tf.compat.v1.estimator.experimental.KMeans`):
    its init op grows the centers variable from empty (`validate_shape=False`) inside conds whose
    predicates come from that variable's shape, so the branch that concatenates onto the empty
    centers is known not to be taken (a dead branch) and must not run. The initial picks are
    random (TF's and jaxmeta's streams differ): with three well-separated clusters both must pick
    one point of each, in as many runs of the init op. Then Lloyd steps from TF's
    initial centers must give TF's centers.

    Mini-batch training reads the cluster counts (`ResourceGather`) with no order against its
    `ResourceScatterAdd` to them in the same step: a race in the graph. jaxmeta reads the counts
    before the update (the step size 1/(n + k) of the algorithm as written); TF's executor runs the
    scatter first here, every time, and steps by 1/(n + 2k). TF's reference gets a control edge
    that puts the read first, after the graph jaxmeta imports was exported without it."""
    tf = get_tf()
    from tensorflow.python.ops import clustering_ops

    rng = np.random.default_rng(0)
    means = np.array([(1, 0), (5, 5), (0, 5)], np.float32)
    points = np.concatenate([rng.normal(c, 0.1, (20, 2)) for c in means]).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        kmeans = clustering_ops.KMeans(x, 3, initial_clusters=init, distance_metric=metric, random_seed=1,
                                       use_mini_batch=mini_batch, mini_batch_steps_per_iteration=2)
        _, _, scores, initialized, init_op, train_op = kmeans.training_graph()
        loss = tf.reduce_sum(scores[0], name="loss")
        tf_vars = tf.compat.v1.global_variables()
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        if mini_batch:  # the race on the counts, settled as jaxmeta settles it (docstring)
            counts = next(v for v in tf_vars if v.op.name not in ("clusters", "clusters_updated",
                                                                    "initialized", "update_in_steps"))
            ops_by_type = {(o.type, o.inputs[0].op.name): o for o in g.get_operations() if o.inputs}
            ops_by_type["ResourceScatterAdd", counts.op.name]._add_control_input(
                ops_by_type["ResourceGather", counts.op.name])
        # One thread: TF's k-means assigns its variables unlocked, and its parallel executor may
        # order those assignments differently from run to run.
        config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=1, intra_op_parallelism_threads=1)
        with tf.compat.v1.Session(graph=g, config=config) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            start = {v.op.name: sess.run(v) for v in tf_vars}
            init_runs = 0
            while not sess.run(initialized):
                sess.run(init_op, {x: points})
                init_runs += 1
            initial = {v.op.name: sess.run(v) for v in tf_vars}
            for _ in range(4):
                sess.run(train_op, {x: points})
            want = {v.op.name: sess.run(v) for v in tf_vars}
            want_loss = sess.run(loss, {x: points})

    graph = jaxmeta.import_meta_graph(meta)
    variables = {name: jnp.asarray(value) for name, value in start.items()}
    assert variables["clusters"].shape == (0,)
    init_step = graph.step([], ["x:0"], targets=[init_op.name])
    if init != "kmc2":  # k-MC² grows the centers in a while loop: that runs on concrete values only
        init_step = jax.jit(init_step)
    for _ in range(init_runs):  # k-MC² adds one center per run, as in TF
        assert not variables["initialized"]
        _, variables = init_step(variables, points)
    assert bool(variables["initialized"]) and variables["clusters"].shape == (3, 2)
    nearest = np.argmin(((means[:, None] - np.asarray(variables["clusters"])[None]) ** 2).sum(-1), 1)
    assert sorted(nearest) == [0, 1, 2], "one initial center per cluster"
    if init == "kmc2":  # a (jit) Session runs that loop on the host by itself
        sess = jaxmeta.Session(graph, dict(start))
        for _ in range(init_runs):
            sess.run(init_op.name, {"x:0": points})
        assert bool(sess.run(initialized.name)) and np.shape(sess.run("clusters:0")) == (3, 2)

    train = jax.jit(graph.step([], ["x:0"], targets=[train_op.name]))
    variables = {name: jnp.asarray(value) for name, value in initial.items()}
    for _ in range(4):
        _, variables = train(variables, points)
    for name, value in want.items():
        assert_close(variables[name], value, rtol=1e-4, atol=1e-5, what=f"{name} after 4 steps")
    (got_loss,) = jax.jit(graph.function([loss.name], ["x:0"]))(variables, points)
    assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-5, what="loss")

    if init != "kmc2":  # the concatenation that is not taken has no value, as in TF
        with pytest.raises(jaxmeta.GraphError, match="cond branch that is not taken"):
            graph.function(["cond/cond/concat:0"], ["x:0"])(start, points)
