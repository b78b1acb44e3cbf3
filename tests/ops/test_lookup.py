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


def test_static_table_export():
    """A static table's export: its pairs, as TF's (whose order is its hash map's; jaxmeta's sorted)."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        tables = [tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)),
                                            default) for keys, values, default in
                  ((["zeta", "alpha", "mid", "b"], [1, 2, 3, 4], -1), ([7, -3, 12], ["x", "y", "z"], "?"))]
        exports = [t.name for table in tables for t in table.export()]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.tables_initializer())
            want = sess.run(exports)
    got = jaxmeta.import_meta_graph(meta).function(exports)({})
    for i in (0, 2):
        assert sorted(zip(np.asarray(got[i]).tolist(), np.asarray(got[i + 1]).tolist())) == \
            sorted(zip(want[i].tolist(), want[i + 1].tolist()))
        assert np.asarray(got[i]).tolist() == sorted(want[i].tolist())


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


# --- mutable tables ------------------------------------------------------------------------------


def _mutable_tables(tf, buckets=8):
    """A graph with TF2's / TF1 contrib's mutable tables: int -> float, string -> vector, int ->
    string, and dense int -> int and string -> float tables that start with `buckets` buckets
    (they grow)."""
    v1 = tf.compat.v1
    k = v1.placeholder(tf.int64, [None], name="k")
    v = v1.placeholder(tf.float32, [None], name="v")
    s = v1.placeholder(tf.string, [None], name="s")
    counts = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, default_value=-1.0, name="counts")
    vectors = tf.lookup.experimental.MutableHashTable(tf.string, tf.float32, default_value=[0.5, -0.5], name="vectors")
    names = tf.lookup.experimental.MutableHashTable(tf.int64, tf.string, default_value="?", name="names")
    dense = tf.lookup.experimental.DenseHashTable(tf.int64, tf.int64, default_value=-1, empty_key=0, deleted_key=-1,
                                                  initial_num_buckets=buckets, name="dense")
    words = tf.lookup.experimental.DenseHashTable(tf.string, tf.float32, default_value=-2.0, empty_key="",
                                                  deleted_key="<deleted>", initial_num_buckets=buckets, name="words")
    insert = tf.group(counts.insert(k, v), vectors.insert(s, tf.stack([v, 2 * v], 1)),
                      names.insert(k, s), dense.insert(k, 10 * k), words.insert(s, v), name="insert")
    remove = tf.group(counts.remove(k), vectors.remove(s), names.remove(k), dense.remove(k), words.remove(s),
                      name="remove")
    dense_keys, dense_values = dense.export()
    words_keys, words_values = words.export()
    fetches = {"counts": counts.lookup(k), "vectors": vectors.lookup(s), "names": names.lookup(k),
               "dense": dense.lookup(k), "sizes": tf.stack([counts.size(), vectors.size(), names.size(), dense.size()]),
               "dense_keys": dense_keys, "dense_values": dense_values, "exported": counts.export(),
               "words": words.lookup(s), "words_keys": words_keys, "words_values": words_values}
    return {name: getattr(t, "name", None) or [x.name for x in t] for name, t in fetches.items()}, insert, remove


# Inserts and removals in turn: new keys, updates, a key given twice (the last value stays),
# removals of present and absent keys, then the dense table grows past its 8 buckets.
_SCRIPT = [
    ("insert", [3, 5, 7, 11], [1.0, 2.0, 3.0, 4.0], ["c", "e", "g", "k"]),
    ("insert", [5, 21, 5, 37], [6.0, 7.0, 8.0, 9.0], ["e", "u", "e", "x"]),
    ("remove", [7, 99], [0.0, 0.0], ["g", "zz"]),
    ("insert", list(range(40, 52)), list(np.arange(12.0)), [f"w{i}" for i in range(12)]),
]
_QUERY = [3, 5, 7, 21, 99, 40, 51]
_QUERY_S = ["c", "e", "g", "u", "zz", "w0", "w11"]


def _feeds(keys, values, strings):
    return {"k:0": np.array(keys, np.int64), "v:0": np.array(values, np.float32), "s:0": np.array(strings, object)}


def _tf_script(build_graph):
    """TF's lookups after each step of `_SCRIPT`, the graph's MetaGraphDef, and a checkpoint
    written at the end (its prefix)."""
    import tempfile

    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        names, insert, remove = build_graph(tf)
        saver = tf.compat.v1.train.Saver()
        meta = saver.export_meta_graph()
        prefix = tempfile.mkdtemp() + "/tables.ckpt"
        want = []
        with tf.compat.v1.Session(graph=g) as sess:
            for op, *feed in _SCRIPT:
                sess.run({"insert": insert, "remove": remove}[op], _feeds(*feed))
                want.append(sess.run(names, _feeds(_QUERY, [0.0] * len(_QUERY), _QUERY_S)))
            saver.save(sess, prefix)
    return names, insert.name, remove.name, want, meta, prefix


def _assert_tables_equal(got, want):
    for name in want:
        if name == "exported":  # a hash table's export: TF's order is its unordered_map's
            keys, values = (np.asarray(x) for x in got[name])
            w_keys, w_values = want[name]
            np.testing.assert_array_equal(keys[np.argsort(keys)], np.sort(w_keys))
            np.testing.assert_array_equal(values[np.argsort(keys)], w_values[np.argsort(w_keys)])
        elif np.asarray(want[name]).dtype == object:
            assert np.asarray(got[name]).tolist() == np.asarray(want[name]).tolist(), name
        else:
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), name)


@pytest.mark.parametrize("jit", [True, False])
def test_mutable_tables_in_a_session_match_tf(jit):
    """Every step's lookups, sizes and the dense table's buckets (TF's own layout, through its
    growth from 8 to 32 buckets) as TF's; a jit Session stages the changes on the host by itself."""
    names, insert, remove, want, meta, _ = _tf_script(_mutable_tables)
    graph = jaxmeta.import_meta_graph(meta)
    with jaxmeta.Session(graph, graph.init_variables(), jit=jit) as sess:
        for (op, *feed), w in zip(_SCRIPT, want):
            sess.run({"insert": insert, "remove": remove}[op], _feeds(*feed))
            _assert_tables_equal(sess.run(names, _feeds(_QUERY, [0.0] * len(_QUERY), _QUERY_S)), w)
        assert np.shape(sess.variables["dense"].keys) == (32, 1)


def test_mutable_tables_checkpoints_both_ways(tmp_path):
    """TF's checkpoint of the tables restores into jaxmeta (lookups traced under jax.jit), goes
    through an Orbax checkpoint whole, and jaxmeta's save restores into TF with the same contents."""
    names, _, _, want, meta, prefix = _tf_script(_mutable_tables)
    graph = jaxmeta.import_meta_graph(meta)
    variables = graph.saver.restore(prefix)
    assert [int(variables[name].size) for name in ("counts", "dense", "words")] == [17, 17, 17]
    query = _feeds(_QUERY, [0.0] * len(_QUERY), _QUERY_S)
    numeric = {k: names[k] for k in ("counts", "dense", "dense_keys", "dense_values")}
    f = graph.function(numeric, ["k:0"])
    traced = {k: v for k, v in variables.items() if k not in ("vectors", "names", "words")}  # JAX holds no strings
    for fn in (f, jax.jit(f)):
        got = fn(variables if fn is f else traced, query["k:0"])
        _assert_tables_equal(got, {k: want[-1][k] for k in numeric})
    with jaxmeta.Session(graph, variables) as sess:
        _assert_tables_equal(sess.run(names, query), want[-1])
    variables = jaxmeta.restore_orbax(jaxmeta.save_orbax(tmp_path / "orbax", variables))[0]
    assert all(isinstance(v, jaxmeta.TableContents) for v in variables.values())

    saved = graph.saver.save(variables, str(tmp_path / "jaxmeta.ckpt"))
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        saver = tf.compat.v1.train.import_meta_graph(meta)
        with tf.compat.v1.Session(graph=g) as sess:
            saver.restore(sess, saved)
            _assert_tables_equal(sess.run(names, {g.get_tensor_by_name(k): v for k, v in query.items()}), want[-1])


def test_mutable_table_lookups_compile_once_per_doubling():
    """A hash table's arrays grow by doubling: a jitted lookup retraces only when they double,
    and an insert under jax.jit says where it can run."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        k = tf.compat.v1.placeholder(tf.int64, [None], name="k")
        table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, default_value=-1)
        insert, found = table.insert(k, k * k), table.lookup(k)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    add, lookup = graph.step([], ["k:0"], [insert.name]), graph.function(found.name, ["k:0"])
    traces = []

    @jax.jit
    def jitted(variables, keys):
        traces.append(1)
        return lookup(variables, keys)

    variables = graph.init_variables()
    for start in range(0, 40, 4):
        _, variables = add(variables, np.arange(start, start + 4, dtype=np.int64))
        np.testing.assert_array_equal(jitted(variables, np.array([start, start + 3, 99])),
                                      [start * start, (start + 3) ** 2, -1])
    assert len(traces) == 3  # 16, 32 and 64 entries
    with pytest.raises(jaxmeta.GraphError, match="inserting into a table needs the values"):
        jax.jit(add)(variables, np.array([1], np.int64))


def test_v1_ref_mutable_table_of_tensors():
    """The v1 ops (ref handles: `MutableHashTableOfTensors`, `LookupTableInsert`, ...)."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        k = tf.compat.v1.placeholder(tf.int32, [None], name="k")
        table = tf.raw_ops.MutableHashTableOfTensors(key_dtype=tf.int32, value_dtype=tf.float32, value_shape=[3])
        insert = tf.raw_ops.LookupTableInsert(table_handle=table, keys=k,
                                              values=tf.cast(tf.stack([k, -k, 2 * k], 1), tf.float32))
        fetches = [tf.raw_ops.LookupTableFind(table_handle=table, keys=k + 1, default_value=[7.0, 8.0, 9.0]).name,
                   tf.raw_ops.LookupTableSize(table_handle=table).name,
                   *[t.name for t in tf.raw_ops.LookupTableExport(table_handle=table, Tkeys=tf.int32,
                                                                   Tvalues=tf.float32)]]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            want = [(sess.run(insert, {k: keys}), sess.run(fetches, {k: keys}))[1] for keys in ([4, 1, 9], [5, 2])]
    graph = jaxmeta.import_meta_graph(meta)
    with jaxmeta.Session(graph) as sess:
        for keys, w in zip(([4, 1, 9], [5, 2]), want):
            sess.run(insert.name, {"k:0": np.array(keys, np.int32)})
            got = sess.run(fetches, {"k:0": np.array(keys, np.int32)})
            for a, b in zip(got[:2], w[:2]):
                np.testing.assert_array_equal(np.asarray(a), b)
            order, w_order = np.argsort(np.asarray(got[2])), np.argsort(w[2])
            np.testing.assert_array_equal(np.asarray(got[2])[order], w[2][w_order])
            np.testing.assert_array_equal(np.asarray(got[3])[order], w[3][w_order])


def test_training_graph_with_a_counting_table():
    """A TF1 training graph that counts the ids it sees in a table and scales its loss by their
    frequency: three steps of continued training in a jit Session match TF's."""
    tf = get_tf()
    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        v1.set_random_seed(3)
        ids = v1.placeholder(tf.int64, [None], name="ids")
        y = v1.placeholder(tf.float32, [None], name="y")
        seen = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, default_value=0.0, name="seen")
        count = seen.lookup(ids) + 1.0
        embedding = v1.get_variable("embedding", [10, 4])
        w = v1.get_variable("w", [4, 1])
        pred = tf.squeeze(tf.matmul(tf.nn.embedding_lookup(embedding, ids), w), 1)
        loss = tf.reduce_mean(tf.square(pred - y) / count)
        with tf.control_dependencies([v1.train.GradientDescentOptimizer(0.5).minimize(loss)]):
            train = tf.group(seen.insert(ids, count), name="train")
        saver = v1.train.Saver()
        meta = saver.export_meta_graph()
        batches = [(np.array(b, np.int64), np.linspace(-1, 1, len(b)).astype(np.float32))
                   for b in ([1, 2, 3], [2, 3, 4, 2], [1, 1, 9])]
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            initial = sess.run({"embedding": embedding, "w": w})
            want = [sess.run([loss, train], {ids: i, y: t})[0] for i, t in batches]
            want_count = sess.run(count, {ids: np.arange(10)})
    graph = jaxmeta.import_meta_graph(meta)
    with jaxmeta.Session(graph, {**graph.init_variables(), **initial}) as sess:
        got = [sess.run([loss.name, train.name], {"ids:0": i, "y:0": t})[0] for i, t in batches]
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_array_equal(sess.run(count.name, {"ids:0": np.arange(10)}), want_count)


def test_hostile_mutable_tables(tmp_path):
    """Tables that would allocate without bound, lookups of a dense table's free keys, and a
    checkpoint whose buckets are not a power of 2: GraphError / CheckpointError, not a crash."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        k = tf.compat.v1.placeholder(tf.int64, [None], name="k")
        huge = tf.raw_ops.MutableDenseHashTableV2(empty_key=tf.constant(0, tf.int64),
                                                  deleted_key=tf.constant(-1, tf.int64), value_dtype=tf.int64,
                                                  initial_num_buckets=1 << 40)
        tf.raw_ops.LookupTableSizeV2(table_handle=huge, name="huge_size")
        dense = tf.lookup.experimental.DenseHashTable(tf.int64, tf.int64, -1, empty_key=0, deleted_key=-1,
                                                      initial_num_buckets=4, name="dense")
        found = dense.lookup(k, name="found")
        saver = tf.compat.v1.train.Saver([dense])
        meta = saver.export_meta_graph()
    graph = jaxmeta.import_meta_graph(meta)
    with pytest.raises(jaxmeta.GraphError, match="at most 268435456"):
        graph.function("huge_size:0")
    with pytest.raises(jaxmeta.GraphError, match="is table 'dense'.s empty_key"):
        graph.function(found.name, ["k:0"])({}, np.array([5, 0], np.int64))
    from jaxmeta.checkpoint import write_checkpoint

    write_checkpoint(str(tmp_path / "bad"), {spec.key: np.zeros((6, 1), np.int64) for spec in graph.saver.restore_specs})
    with pytest.raises(jaxmeta.CheckpointError, match="6 buckets; a dense table has a power of 2"):
        graph.saver.restore(str(tmp_path / "bad"))


# --- anonymous tables (experimental_is_anonymous=True): a new table each run ---------------------


def _anonymous_tables(tf, k, s):
    """Anonymous int -> float, string -> vector and dense (8 buckets, they grow) int -> int tables,
    filled, emptied of the first key, then read, in one run; and lookups in a run of their own."""
    counts = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0, experimental_is_anonymous=True)
    vectors = tf.lookup.experimental.MutableHashTable(tf.string, tf.float32, [0.5, -0.5], experimental_is_anonymous=True)
    dense = tf.lookup.experimental.DenseHashTable(tf.int64, tf.int64, -1, empty_key=0, deleted_key=-1,
                                                  initial_num_buckets=8, experimental_is_anonymous=True)
    v = tf.cast(k, tf.float32)
    inserts = [counts.insert(k, v / 2), vectors.insert(s, tf.stack([v, -v], 1)), dense.insert(k, 10 * k)]
    with tf.control_dependencies(inserts):
        removes = [counts.remove(k[:1]), vectors.remove(s[:1]), dense.remove(k[:1])]
    with tf.control_dependencies(removes):
        dense_keys, dense_values = dense.export()
        filled = [counts.lookup(k + 1), vectors.lookup(s), dense.lookup(k + 1), dense_keys, dense_values,
                  tf.stack([counts.size(), vectors.size(), dense.size()])]
    fresh = [counts.lookup(k), vectors.lookup(s), dense.lookup(k), tf.stack([counts.size(), dense.size()])]
    return [t.name for t in filled], [t.name for t in fresh]


def _anonymous_feeds(n):
    return {"k:0": np.arange(1, n + 1, dtype=np.int64) * 3,
            "s:0": np.array([f"w{i}".encode() for i in range(n)], object)}


@pytest.mark.parametrize("jit", [True, False])
def test_anonymous_mutable_tables_live_for_one_run(jit):
    """Inserts, removals, lookups, sizes and the dense table's buckets (grown past its 8) in one
    run as TF's; a run of its own finds new, empty tables; nothing reaches the variables."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        k = tf.compat.v1.placeholder(tf.int64, [None], name="k")
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        filled, fresh = _anonymous_tables(tf, k, s)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            want = [sess.run(names, _anonymous_feeds(n)) for names, n in ((filled, 12), (fresh, 5), (filled, 3))]
    assert {n.op for n in meta.graph_def.node} >= {"AnonymousMutableHashTable", "AnonymousMutableHashTableOfTensors",
                                                   "AnonymousMutableDenseHashTable"}
    graph = jaxmeta.import_meta_graph(meta)
    assert graph.init_variables() == {}
    with jaxmeta.Session(graph, jit=jit) as sess:
        for (names, n), w in zip(((filled, 12), (fresh, 5), (filled, 3)), want):
            got = sess.run(names, _anonymous_feeds(n))
            for name, a, b in zip(names, got, w):
                np.testing.assert_array_equal(np.asarray(a), b, name)
        assert sess.variables == {}


def test_anonymous_tables_under_jit():
    """Inserts of constant keys run under jax.jit too (they are known when traced); lookups of fed
    keys and sizes trace, as TF's, and the step returns no new variables."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        q = tf.compat.v1.placeholder(tf.int64, [None, None], name="q")
        keys = tf.constant([5, 9, 2, 40, 7], tf.int64)
        table = tf.raw_ops.AnonymousMutableHashTable(key_dtype=tf.int64, value_dtype=tf.float32)
        rows = tf.raw_ops.AnonymousMutableHashTableOfTensors(key_dtype=tf.int64, value_dtype=tf.int32,
                                                             value_shape=[2])
        dense = tf.raw_ops.AnonymousMutableDenseHashTable(empty_key=tf.constant(-1, tf.int64),
                                                          deleted_key=tf.constant(-2, tf.int64),
                                                          value_dtype=tf.float32, initial_num_buckets=4)
        changes = [tf.raw_ops.LookupTableInsertV2(table_handle=table, keys=keys, values=tf.cast(keys, tf.float32) / 4),
                   tf.raw_ops.LookupTableInsertV2(table_handle=rows, keys=keys,
                                                  values=tf.stack([tf.cast(keys, tf.int32), -tf.cast(keys, tf.int32)],
                                                                  1)),
                   tf.raw_ops.LookupTableInsertV2(table_handle=dense, keys=keys, values=tf.cast(keys, tf.float32))]
        with tf.control_dependencies(changes):
            changes = [tf.raw_ops.LookupTableRemoveV2(table_handle=h, keys=keys[1:2]) for h in (table, rows, dense)]
        with tf.control_dependencies(changes):
            fetches = [tf.raw_ops.LookupTableFindV2(table_handle=table, keys=q, default_value=tf.constant(-1.0)),
                       tf.raw_ops.LookupTableFindV2(table_handle=rows, keys=q, default_value=tf.constant([7, 8])),
                       tf.raw_ops.LookupTableFindV2(table_handle=dense, keys=tf.reshape(q, [-1]),
                                                 default_value=tf.constant(-3.0)),
                       tf.stack([tf.raw_ops.LookupTableSizeV2(table_handle=h) for h in (table, rows, dense)])]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        query = np.array([[5, 9, 1], [40, 7, 2]], np.int64)
        with tf.compat.v1.Session(graph=g) as sess:
            want = sess.run(fetches, {q: query})
    step = jaxmeta.import_meta_graph(meta).step([t.name for t in fetches], ["q:0"])
    for fn in (step, jax.jit(step)):
        got, new_variables = fn({}, query)
        assert new_variables == {}
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize("v2", [False, True])
def test_anonymous_tables_filled_in_a_loop(v2):
    """A while loop (v1 frames or a v2 While) inserts into anonymous tables made outside it; the
    loop runs on the host, and the lookups after it see what it inserted."""
    tf = get_tf()
    (tf.compat.v1.enable_control_flow_v2 if v2 else tf.compat.v1.disable_control_flow_v2)()
    try:
        g = tf.Graph()
        with g.as_default():
            k = tf.compat.v1.placeholder(tf.int64, [None], name="k")
            table = tf.raw_ops.AnonymousMutableHashTable(key_dtype=tf.int64, value_dtype=tf.float32)
            dense = tf.raw_ops.AnonymousMutableDenseHashTable(empty_key=tf.constant(-1, tf.int64),
                                                              deleted_key=tf.constant(-2, tf.int64),
                                                              value_dtype=tf.float32, initial_num_buckets=4)

            def body(i):
                with tf.control_dependencies([tf.raw_ops.LookupTableInsertV2(
                        table_handle=h, keys=k * i, values=tf.cast(k + i, tf.float32)) for h in (table, dense)]):
                    return i + 1

            done = tf.while_loop(lambda i: i < 3, body, [tf.constant(0, tf.int64)])[0]
            with tf.control_dependencies([done]):
                every = tf.range(10, dtype=tf.int64)
                fetches = [tf.raw_ops.LookupTableFindV2(table_handle=h, keys=every, default_value=tf.constant(-1.0))
                           for h in (table, dense)]
                fetches += [tf.raw_ops.LookupTableSizeV2(table_handle=h) for h in (table, dense)]
            meta = tf.compat.v1.train.export_meta_graph(graph=g)
            with tf.compat.v1.Session(graph=g) as sess:
                want = sess.run(fetches, {k: [1, 2, 3]})
    finally:
        tf.compat.v1.disable_control_flow_v2()
    assert ("While" in {n.op for n in meta.graph_def.node}) == v2
    graph = jaxmeta.import_meta_graph(meta)
    for jit in (True, False):
        with jaxmeta.Session(graph, jit=jit) as sess:
            for a, b in zip(sess.run([t.name for t in fetches], {"k:0": np.array([1, 2, 3], np.int64)}), want):
                np.testing.assert_array_equal(np.asarray(a), b)


def test_anonymous_tables_in_a_tf_function():
    """Anonymous tables made inside a tf.function (raw ops) called twice from a v1 graph: each
    call makes its own tables, mutable and static."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        k = tf.compat.v1.placeholder(tf.int64, [None], name="k")

        @tf.function
        def f(keys, scale):
            rows = tf.raw_ops.AnonymousMutableHashTableOfTensors(key_dtype=tf.int64, value_dtype=tf.float32,
                                                                 value_shape=[2])
            values = tf.cast(keys, tf.float32) * scale
            tf.raw_ops.LookupTableInsertV2(table_handle=rows, keys=keys, values=tf.stack([values, -values], 1))
            tf.raw_ops.LookupTableRemoveV2(table_handle=rows, keys=keys[:1])
            static = tf.raw_ops.AnonymousHashTable(key_dtype=tf.int64, value_dtype=tf.string)
            tf.raw_ops.LookupTableImportV2(table_handle=static, keys=tf.constant([1, 2, 3], tf.int64),
                                           values=tf.constant(["one", "two", "three"]))
            return (tf.raw_ops.LookupTableFindV2(table_handle=rows, keys=keys + 1, default_value=[7.0, 8.0]),
                    tf.raw_ops.LookupTableSizeV2(table_handle=rows),
                    tf.raw_ops.LookupTableFindV2(table_handle=static, keys=keys, default_value="?"))

        # An outer table of the same name as the body's: each call makes its own, apart from it.
        outer = tf.raw_ops.AnonymousMutableHashTableOfTensors(key_dtype=tf.int64, value_dtype=tf.float32,
                                                              value_shape=[2])
        first = f(k, 2.0)
        with tf.control_dependencies([tf.raw_ops.LookupTableInsertV2(table_handle=outer, keys=k,
                                                                     values=tf.ones([tf.size(k), 2])), *first]):
            second = f(k[1:], -1.0)
        with tf.control_dependencies(second):
            in_outer = tf.raw_ops.LookupTableFindV2(table_handle=outer, keys=k - 1, default_value=[7.0, 8.0])
        fetches = [t.name for t in (*first, *second, in_outer)]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            want = sess.run(fetches, {k: [1, 2, 3, 9]})
    assert {"AnonymousHashTable", "AnonymousMutableHashTableOfTensors"} <= _function_ops(meta)
    assert "AnonymousMutableHashTableOfTensors" in {n.name for n in meta.graph_def.node}
    graph = jaxmeta.import_meta_graph(meta)
    for jit in (True, False):
        with jaxmeta.Session(graph, jit=jit) as sess:
            got = sess.run(fetches, {"k:0": np.array([1, 2, 3, 9], np.int64)})
            for a, b in zip(got, want):
                assert np.asarray(a).tolist() == b.tolist()


def _function_ops(meta):
    return {n.op for f in meta.graph_def.library.function for n in f.node_def}


def test_anonymous_static_table():
    """`StaticHashTable(experimental_is_anonymous=True)` read in the run that initializes it (a
    control dependency on `tables_initializer`, as TF's docs say), with and without jit."""

    def build(tf):
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([7, -3, 12], tf.int64), tf.constant([0.5, 1.5, -2.0])),
            default_value=-1.0, experimental_is_anonymous=True)
        q = tf.compat.v1.placeholder(tf.int64, [None], name="q")
        with tf.control_dependencies([tf.compat.v1.tables_initializer()]):
            return [table.lookup(q), table.size()]

    query = np.array([7, 1, 12, -3], np.int64)

    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        fetches = [t.name for t in build(tf)]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            want = sess.run(fetches, {"q:0": query})
    graph = jaxmeta.import_meta_graph(meta)
    assert "AnonymousHashTable" in {node.type for node in graph.nodes.values()}
    results = []
    for jit in (True, False):
        with jaxmeta.Session(graph, jit=jit) as sess:
            results.append(sess.run(fetches, {"q:0": query}))
    # The initializer (LookupTableImportV2, which also restores mutable tables) changes nothing
    # of a static table: graph.function runs the run that includes it, and graph.step returns no
    # new variables.
    function = graph.function(fetches, ["q:0"])
    step = graph.step(fetches, ["q:0"])
    for fn in (function, jax.jit(function)):
        results.append(fn({}, query))
    for fn in (step, jax.jit(step)):
        got, new_variables = fn({}, query)
        assert new_variables == {}
        results.append(got)
    for got in results:
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), b)


def test_anonymous_static_table_needs_its_initializer_in_the_run():
    """A lookup of an anonymous static table in a run without its initializer: TF fails ("Table
    not initialized": the table is new in each run), and so does jaxmeta, saying what to do."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant([1, 2], tf.int64), tf.constant([10, 20], tf.int64)), -1,
            experimental_is_anonymous=True)
        found = table.lookup(tf.constant([1, 3], tf.int64))
        init = tf.compat.v1.tables_initializer()
        with tf.control_dependencies([init]):
            ordered = table.lookup(tf.constant([1, 3], tf.int64))
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(init)
            with pytest.raises(tf.errors.FailedPreconditionError, match="Table not initialized"):
                sess.run(found)
            np.testing.assert_array_equal(sess.run(ordered), [10, -1])
    graph = jaxmeta.import_meta_graph(meta)
    with pytest.raises(jaxmeta.GraphError, match="is anonymous: .*must run in the same run"):
        graph.function(found.name)
    with jaxmeta.Session(graph) as sess:
        with pytest.raises(jaxmeta.GraphError, match="Table not initialized"):
            sess.run(found.name)
        np.testing.assert_array_equal(sess.run(ordered.name), [10, -1])


def test_anonymous_mutable_table_in_a_saver(tmp_path):
    """TF's v1 Saver saves an anonymous table (always empty: each run makes it anew) and restores
    into one that the run drops: jaxmeta restores TF's checkpoint into the variables alone and
    saves the empty table under TF's keys, which TF reads back."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        v = tf.compat.v1.get_variable("v", initializer=tf.constant([1.0, 2.0]))
        table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, -1.0, experimental_is_anonymous=True)
        saver = tf.compat.v1.train.Saver([v, table])
        meta = tf.compat.v1.train.export_meta_graph(graph=g, saver_def=saver.as_saver_def())
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(v.initializer)
            tf_prefix = saver.save(sess, str(tmp_path / "tf.ckpt"))
    assert "AnonymousMutableHashTable" in {n.op for n in meta.graph_def.node}
    graph = jaxmeta.import_meta_graph(meta)
    restored = graph.saver.restore(tf_prefix)
    assert list(restored) == ["v"]
    np.testing.assert_array_equal(np.asarray(restored["v"]), [1.0, 2.0])
    prefix = graph.saver.save({"v": np.asarray([3.0, 4.0], np.float32)}, str(tmp_path / "jm.ckpt"))
    assert dict(tf.train.list_variables(prefix)) == dict(tf.train.list_variables(tf_prefix))
    with g.as_default(), tf.compat.v1.Session(graph=g) as sess:
        saver.restore(sess, prefix)
        np.testing.assert_array_equal(sess.run(v), [3.0, 4.0])
