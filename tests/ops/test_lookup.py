"""The `lookup` family against TensorFlow: static hash tables (TF2's `StaticHashTable`, TF1's
`index_table_from_tensor` / `index_to_string_table_from_tensor`, the v1 ref `HashTable`)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import get_tf

import jaxmeta

pytestmark = pytest.mark.oracle

VOCAB = ["emerson", "lake", "palmer", "tarkus", "karn"]


def run_both(build, feeds, *, jit=True, session_jit=True):
    """Runs `build(tf)`'s fetches in TF (after `tables_initializer()`) and in jaxmeta: a Session
    (which also runs the table initializer, a no-op), and graph.function with and without jit."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        fetches = build(tf)
        init = tf.compat.v1.tables_initializer()
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(init)
            want = sess.run(fetches, {g.get_tensor_by_name(k): v for k, v in feeds.items()})
    graph = jaxmeta.import_meta_graph(meta)
    names = [t.name for t in fetches]
    with jaxmeta.Session(graph, jit=session_jit) as sess:
        assert sess.run(init.name) is None
        results = [sess.run(names, feeds)]
    f = graph.function(names, feeds=list(feeds))
    results.append(f({}, *feeds.values()))
    if jit:
        results.append(jax.jit(f)({}, *feeds.values()))
    for got in results:
        for name, g_value, w_value in zip(names, got, want):
            w_value = np.asarray(w_value)
            if w_value.dtype == object:
                assert np.asarray(g_value).tolist() == [_bytes(v) for v in w_value.tolist()] if w_value.ndim else \
                    g_value == w_value, name
            else:
                np.testing.assert_array_equal(np.asarray(g_value), w_value.astype(np.asarray(g_value).dtype), name)
    return graph


def _bytes(v):
    return v.encode() if isinstance(v, str) else v


def test_static_hash_table_of_integers():
    def build(tf):
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([7, -3, 12, 0], tf.int64),
                                                tf.constant([70, -30, 120, 1], tf.int64)), default_value=-1)
        q = tf.compat.v1.placeholder(tf.int64, [2, 3], name="q")
        return [table.lookup(q), table.size(), table.lookup(tf.constant([12, 5], tf.int64))]

    run_both(build, {"q:0": np.array([[7, 1, 0], [-3, 12, 99]], np.int64)})


def test_v1_ref_hash_table_int_to_float():
    def build(tf):
        h = tf.raw_ops.HashTable(key_dtype=tf.int32, value_dtype=tf.float32)
        init = tf.raw_ops.InitializeTable(table_handle=h, keys=tf.constant([3, 1, 8]),
                                          values=tf.constant([0.5, 0.25, -2.0]))
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS, init)
        q = tf.compat.v1.placeholder(tf.int32, [None], name="q")
        return [tf.raw_ops.LookupTableFind(table_handle=h, keys=q, default_value=tf.constant(-1.0)),
                tf.raw_ops.LookupTableSize(table_handle=h)]

    run_both(build, {"q:0": np.array([1, 2, 3, 8, 8], np.int32)})


def test_index_table_of_fed_strings():
    """TF1's vocabulary lookup: fed strings run without jit (Session falls back on its own)."""
    get_tf()  # skipped without TensorFlow
    from tensorflow.python.ops import lookup_ops

    def build(tf):
        table = lookup_ops.index_table_from_tensor(tf.constant(VOCAB), default_value=-1)
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        ids = tf.identity(table.lookup(words), name="ids")
        emb = tf.constant(np.arange(len(VOCAB) * 2, dtype=np.float32).reshape(-1, 2))
        return [ids, tf.nn.embedding_lookup(emb, tf.maximum(ids, 0)), table.lookup(tf.constant(["karn", "x"]))]

    words = np.array([b"lake", b"nope", b"karn", b"emerson"], object)
    graph = run_both(build, {"words:0": words}, jit=False)
    # Under jax.jit the string feed cannot be traced; the lookup of constant strings can.
    with pytest.raises(TypeError):
        jax.jit(graph.function("ids:0", feeds=["words:0"]))({}, words)


def test_index_to_string_table():
    get_tf()  # skipped without TensorFlow
    from tensorflow.python.ops import lookup_ops

    def build(tf):
        table = lookup_ops.index_to_string_table_from_tensor(tf.constant(VOCAB), default_value="UNK")
        ids = tf.compat.v1.placeholder(tf.int64, [None], name="ids")
        return [tf.identity(table.lookup(ids), name="words"), table.lookup(tf.constant([4, 9], tf.int64))]

    # Strings out of fed ids: traced ids cannot become strings, so not under jit.
    graph = run_both(build, {"ids:0": np.array([0, 3, 7], np.int64)}, jit=False, session_jit=False)
    f = jax.jit(graph.function("words:0", feeds=["ids:0"]))
    with pytest.raises(jaxmeta.GraphError, match="JAX has no strings.*feed the lookup's output"):
        f({}, np.array([1], np.int64))


def _meta(build):
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        out = build(tf)
        return tf.compat.v1.train.export_meta_graph(graph=g), out.name


def test_table_contents_must_be_constants():
    def build(tf):
        keys = tf.compat.v1.placeholder(tf.int64, [2], name="keys")
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, tf.constant([1, 2], tf.int64)), -1)
        return table.lookup(tf.constant([1], tf.int64))

    meta, name = _meta(build)
    with pytest.raises(jaxmeta.GraphError, match="keys and values must be constants"):
        jaxmeta.import_meta_graph(meta).function(name)


def test_table_from_a_file_says_what_to_do(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")

    def build(tf):
        init = tf.lookup.TextFileInitializer(str(vocab), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                             tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER)
        return tf.lookup.StaticHashTable(init, -1).lookup(tf.constant(["lake"]))

    meta, name = _meta(build)
    with pytest.raises(jaxmeta.GraphError, match="reads a file: read it in Python and feed"):
        jaxmeta.import_meta_graph(meta).function(name)


def test_duplicate_keys_with_different_values():
    def build(tf):
        init = tf.lookup.KeyValueTensorInitializer(tf.constant([1, 1], tf.int64), tf.constant([2, 3], tf.int64))
        return tf.lookup.StaticHashTable(init, -1).lookup(tf.constant([1], tf.int64))

    meta, name = _meta(build)
    with pytest.raises(jaxmeta.GraphError, match="holds key 1 twice"):
        jaxmeta.import_meta_graph(meta).function(name)


def test_int64_keys_beyond_int32_under_jit():
    def build(tf):
        init = tf.lookup.KeyValueTensorInitializer(tf.constant([2**40, 5], tf.int64), tf.constant([1, 2], tf.int64))
        q = tf.compat.v1.placeholder(tf.int64, [None], name="q")
        return tf.lookup.StaticHashTable(init, -1).lookup(q)

    meta, name = _meta(build)
    graph = jaxmeta.import_meta_graph(meta)
    with pytest.raises(jaxmeta.PrecisionError, match="table's keys"):
        jax.jit(graph.function(name, feeds=["q:0"]))({}, np.array([5], np.int64))
