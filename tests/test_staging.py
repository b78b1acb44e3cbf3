"""Programs that feed or fetch strings run in host and device stages (`jaxmeta._staging`): the
string ops op by op, the rest compiled. The committed serving SavedModel (serialized Examples in,
class names out) needs no TensorFlow; the text model with data-dependent sizes is built live."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import assert_close, get_tf

import jaxmeta
from jaxmeta import _staging

SERVING = "tests/fixtures/saved_model"


def _split(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    raw, ends = data.tobytes(), np.cumsum(lengths)
    return np.array([raw[end - n:end] for end, n in zip(ends, lengths)], object)


@pytest.fixture()
def serving():
    graph, variables = jaxmeta.load_saved_model(f"{SERVING}/serving")
    want = np.load(f"{SERVING}/expected.npz")
    examples = _split(want["examples"], want["lengths"])
    return graph, variables, examples, want


def _kinds(staged):
    return ["device" if stage.jitted else "host" for stage in staged.stages]


def test_serving_signature_parses_on_the_host_and_compiles_the_model(serving):
    graph, variables, examples, want = serving
    serve = graph.signature()
    staged = serve.staged
    for _ in range(3):
        got = serve(variables, examples=examples)
        assert got["classes"].tolist() == _split(want["classes"], want["class_lengths"]).tolist()
        assert_close(got["logits"], want["logits"], rtol=1e-6, atol=1e-6, what="logits")
    assert _kinds(staged) == ["host", "device", "host"]  # parse, model, class names
    device = staged.stages[1]
    assert device.traces == 1  # compiled once for the three calls
    assert [step.node.type for step in staged.stages[0].program.steps if step.node.type != "Const"] == [
        "ParseExampleV2"]
    assert "LookupTableFindV2" in [step.node.type for step in staged.stages[2].program.steps]
    serve(variables, examples=examples[:2])  # another batch size compiles once more
    assert device.traces == 2 and not staged.op_by_op


def test_sessions_stage_and_match_op_by_op(serving):
    graph, variables, examples, _ = serving
    fetches = {"classes": "hash_table_Lookup/LookupTableFindV2:0", "logits": "BiasAdd:0"}
    with jaxmeta.Session(graph, variables) as staged, jaxmeta.Session(graph, variables, jit=False) as plain:
        for batch in (examples, examples[::-1], examples):
            got = staged.run(fetches, {"examples:0": batch})
            want = plain.run(fetches, {"examples:0": batch})
            assert got["classes"].tolist() == want["classes"].tolist()
            np.testing.assert_array_equal(got["logits"], want["logits"])
        (runner,) = [fn for _, fn, _ in staged._cache.values()]
        assert isinstance(runner, _staging.StagedProgram) and runner.stages[1].traces == 1
        (runner,) = [fn for _, fn, _ in plain._cache.values()]
        assert not isinstance(runner, _staging.StagedProgram)


def test_wrong_input_raises_and_keeps_the_stages(serving):
    graph, variables, examples, _ = serving
    serve = graph.signature()
    serve(variables, examples=examples)
    with pytest.raises(jaxmeta.GraphError, match="serialized example 1 is not a tf.train.Example"):
        serve(variables, examples=np.array([examples[0], b"\xff\xff"], object))
    serve(variables, examples=examples)
    assert not serve.staged.op_by_op and serve.staged.stages[1].traces == 1


def test_shapes_that_change_every_call_run_op_by_op(serving):
    graph, variables, examples, want = serving
    serve = graph.signature()
    many = np.concatenate([examples] * 3)
    for n in range(1, _staging.MAX_TRACES + 3):
        got = serve(variables, examples=many[:n])
        assert_close(got["logits"], np.concatenate([want["logits"]] * 3)[:n], rtol=1e-6, atol=1e-6, what="logits")
    assert serve.staged.op_by_op  # every call had a new batch size


def test_repeated_shapes_keep_compiling_stages(serving):
    graph, variables, examples, _ = serving
    serve = graph.signature()
    for n in [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 4, 4]:  # a serving mix of batch sizes
        serve(variables, examples=examples[:n])
    assert not serve.staged.op_by_op and serve.staged.stages[1].traces == 4


@pytest.mark.oracle
def test_data_dependent_sizes_move_to_the_host():
    """A bag-of-words model (`string_split`, a vocabulary, `embedding_lookup_sparse`) trains with
    Adam: its segment sizes depend on the words, so those ops move to host stages; the loss and
    variables match op by op and TF's."""
    tf = get_tf()
    v1 = tf.compat.v1
    from tensorflow.python.ops import lookup_ops

    words = ["the", "cat", "sat", "on", "mat", "dog"]
    g = tf.Graph()
    with g.as_default():
        text = v1.placeholder(tf.string, [None], name="text")
        labels = v1.placeholder(tf.int32, [None], name="labels")
        tokens = v1.string_split(text)
        ids = lookup_ops.index_table_from_tensor(tf.constant(words), num_oov_buckets=1).lookup(tokens)
        emb = v1.get_variable("emb", [len(words) + 1, 4], initializer=v1.random_normal_initializer(seed=3))
        bag = tf.nn.embedding_lookup_sparse(emb, ids, None, combiner="mean")
        logits = v1.layers.dense(bag, 2, kernel_initializer=v1.random_normal_initializer(seed=4))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train = v1.train.AdamOptimizer(0.05).minimize(loss)
        init = v1.global_variables_initializer()
    batch = {"text:0": np.array([b"the cat sat", b"the dog", b"a cat on the mat"], object),
             "labels:0": np.array([0, 1, 0], np.int32)}
    with g.as_default(), v1.Session(graph=g) as sess:
        sess.run([init, v1.tables_initializer()])
        start = {v.op.name: sess.run(v) for v in v1.global_variables()}
        want = [sess.run([loss, train], {text: batch["text:0"], labels: batch["labels:0"]})[0] for _ in range(3)]
        graph = jaxmeta.import_meta_graph(v1.train.export_meta_graph(graph=g))
    sessions = [jaxmeta.Session(graph, start), jaxmeta.Session(graph, start, jit=False)]
    got = [[s.run([loss.name, train.name], batch)[0] for _ in range(3)] for s in sessions]
    for staged, plain, tf_loss in zip(*got, want):
        assert_close(staged, plain, rtol=1e-6, atol=1e-6, what="staged loss")
        assert_close(staged, tf_loss, rtol=1e-5, atol=1e-6, what="loss against TF")
    for name, value in sessions[1].variables.items():
        assert_close(sessions[0].variables[name], value, rtol=1e-5, atol=1e-6, what=f"variable {name}")
    (runner,) = [fn for _, fn, _ in sessions[0]._cache.values()]
    assert runner.moved and not runner.op_by_op
    assert any(s.jitted for s in runner.stages) and runner.stages[1].traces == 1
    assert len(runner._built) == len(runner.stages)  # the stages of earlier plans are let go


def test_gradients_flow_through_the_stages(serving):
    graph, variables, examples, _ = serving
    logits = graph.function("BiasAdd:0", feeds=["examples:0"])
    assert logits.staged is not None
    got = jax.grad(lambda v: logits(v, examples).sum())(variables)
    x = graph.function("ParseExample/ParseExampleV2:0", feeds=["examples:0"])(variables, examples)
    model = jax.jit(graph.function("BiasAdd:0", feeds=["ParseExample/ParseExampleV2:0"]))
    want = jax.grad(lambda v: model(v, x).sum())(variables)
    assert sorted(got) == sorted(want) == ["b", "w"]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=name)
    assert [stage.jitted is not None for stage in logits.staged.stages] == [False, True]


@pytest.mark.oracle
def test_text_rnn_trains_in_two_stages():
    """Sentences -> split -> padded words -> vocabulary -> embedding -> `dynamic_rnn` (a v1 while
    loop, with its gradient's stacks) -> Adam. The ragged shapes' arithmetic runs on the host with
    the string ops, the stacks' handles stay with the loops that use them: one host stage, one
    compiled stage, and TF's losses."""
    tf = get_tf()
    v1 = tf.compat.v1
    from tensorflow.python.ops import lookup_ops

    words = ["the", "cat", "sat", "on", "mat", "dog", "ran"]
    g = tf.Graph()
    with g.as_default():
        v1.set_random_seed(1)
        text = v1.placeholder(tf.string, [None], name="text")
        labels = v1.placeholder(tf.int32, [None], name="labels")
        tokens = tf.strings.split(text).to_tensor(default_value="<pad>")
        lengths = tf.reduce_sum(tf.cast(tf.not_equal(tokens, "<pad>"), tf.int32), 1)
        ids = lookup_ops.index_table_from_tensor(tf.constant(words), num_oov_buckets=1).lookup(tokens)
        x = tf.nn.embedding_lookup(v1.get_variable("emb", [len(words) + 1, 8]), ids)
        _, state = v1.nn.dynamic_rnn(v1.nn.rnn_cell.BasicRNNCell(16), x, sequence_length=lengths, dtype=tf.float32)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=v1.layers.dense(state, 2)))
        train = v1.train.AdamOptimizer(0.05).minimize(loss)
        init = [v1.global_variables_initializer(), v1.tables_initializer()]
    batch = {"text:0": np.array([b"the cat sat on the mat", b"the dog ran", b"a cat", b"dog dog sat"], object),
             "labels:0": np.int32([0, 1, 0, 1])}
    with g.as_default(), v1.Session(graph=g) as sess:
        sess.run(init)
        start = {v.op.name: sess.run(v) for v in v1.global_variables()}
        want = [sess.run([loss, train], {text: batch["text:0"], labels: batch["labels:0"]})[0] for _ in range(3)]
        graph = jaxmeta.import_meta_graph(v1.train.export_meta_graph(graph=g))
    with jaxmeta.Session(graph, start) as sess:
        got = [sess.run([loss.name, train.name], batch)[0] for _ in range(3)]
        (runner,) = [fn for _, fn, _ in sess._cache.values()]
    assert_close(np.array(got), np.array(want), rtol=1e-5, atol=1e-6, what="losses")
    assert _kinds(runner) == ["host", "device"] and runner.stages[1].traces == 1 and not runner.moved


@pytest.mark.oracle
def test_int64_values_past_int32_keep_their_readers_on_the_host():
    """Numbers parsed from strings that need 64 bits cannot go to a compiled stage with x64 off;
    the ops that read them move to the host, where NumPy keeps them exact (as op by op)."""
    tf = get_tf()
    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        s = v1.placeholder(tf.string, [None], name="s")
        out = tf.math.floormod(tf.strings.to_number(s, tf.int64), 1000) + 1
        feed = np.array([b"123456789012345", b"42"], object)
        with v1.Session(graph=g) as sess:
            want = sess.run(out, {s: feed})
        graph = jaxmeta.import_meta_graph(v1.train.export_meta_graph(graph=g))
    with jaxmeta.Session(graph) as sess:
        np.testing.assert_array_equal(sess.run(out.name, {"s:0": feed}), want)
        (runner,) = [fn for _, fn, _ in sess._cache.values()]
    assert runner.moved == {"FloorMod"} and _kinds(runner) == ["host", "device"]
    with pytest.raises(jaxmeta.PrecisionError, match="StringToNumber"):  # fetched itself, as op by op
        jaxmeta.Session(graph).run("StringToNumber:0", {"s:0": feed})


def test_sessions_stage_numeric_graphs_with_run_time_sizes():
    """No strings at all: a CTC model's logits, its greedy decoder and tf.edit_distance (sizes from
    the decoded values) in a jit Session, which stages the decoder and the distance on the host
    and compiles the model; the same values as TF."""
    tf = get_tf()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 4)).astype(np.float32)  # [time, batch, features]
    w = rng.standard_normal((4, 5)).astype(np.float32)  # 4 classes + blank
    labels = tf.compat.v1.SparseTensorValue([[0, 0], [0, 1], [1, 0]], np.int64([1, 2, 3]), [2, 2])
    g = tf.Graph()
    with g.as_default():
        inputs = tf.compat.v1.placeholder(tf.float32, [6, 2, 4], name="x")
        logits = tf.tensordot(inputs, tf.constant(w), 1, name="logits")
        decoded, _ = tf.nn.ctc_greedy_decoder(logits, tf.fill([2], 6))
        truth = tf.SparseTensor(*labels)
        ler = tf.reduce_mean(tf.edit_distance(tf.cast(decoded[0], tf.int64), truth), name="ler")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            want = sess.run([ler, decoded[0].values], {inputs: x})
    graph = jaxmeta.import_meta_graph(meta)
    with jaxmeta.Session(graph) as sess:
        for _ in range(2):
            got = sess.run([ler.name, decoded[0].values.name], {"x:0": x})
        runner = next(iter(sess._cache.values()))[1]
    assert isinstance(runner, _staging.StagedProgram) and not runner.op_by_op
    assert "device" in _kinds(runner) and runner.moved
    for g_value, w_value in zip(got, want):
        assert_close(g_value, w_value, rtol=1e-6, atol=0)
