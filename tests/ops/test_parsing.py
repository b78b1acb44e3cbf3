"""The `parsing` family against TensorFlow: tf.train.Example (V1, V2 and single-example ops), CSV,
serialized tensors and compressed strings, on constants (folded, also under jax.jit) and on fed
strings (Session and graph.function unjitted)."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
from oracle import compare_host_ops as check
from oracle import get_tf

import jaxmeta
from jaxmeta.ops import parsing
from jaxmeta.proto import example_pb2

pytestmark = pytest.mark.oracle


def example(**features) -> bytes:
    """A serialized tf.train.Example (jaxmeta's own schema): floats, ints or bytes per key (an empty
    list's kind from its NumPy dtype)."""
    ex = example_pb2.Example()
    for key, values in features.items():
        feature = ex.features.feature[key]
        if values is None:  # present, but no list set
            feature.SetInParent()
        elif np.asarray(values).dtype.kind == "f":
            feature.float_list.value.extend(values)
        elif np.asarray(values).dtype.kind == "i":
            feature.int64_list.value.extend(values)
        else:
            feature.bytes_list.value.extend(values)
    return ex.SerializeToString()


BATCH = np.array([
    example(a=[1.0, 2.0], b=[3], c=[b"x"], d=[1.5, 2.5, 3.5], e=[7, 8], m=[1.0, 2.0, 3.0, 4.0]),
    example(a=[4.0, 5.0], b=[1, 2, 3], d=[0.5], s=[b"p", b"q"]),
    example(a=[6.0, 7.0], c=[b""], e=np.zeros(0, np.int64), m=[5.0, 6.0], d=None),
], object)


def spec(tf):
    return {
        "a": tf.io.FixedLenFeature([2], tf.float32),
        "b": tf.io.VarLenFeature(tf.int64),
        "s": tf.io.VarLenFeature(tf.string),
        "c": tf.io.FixedLenFeature([], tf.string, default_value="zz"),
        "i": tf.io.FixedLenFeature([2], tf.int64, default_value=[-1, -2]),
        "d": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True, default_value=-1.0),
        "m": tf.io.FixedLenSequenceFeature([2], tf.float32, allow_missing=True),
        "e": tf.io.RaggedFeature(tf.int64),
    }


def flat(parsed: dict) -> list:
    out = []
    for key in sorted(parsed):
        value = parsed[key]
        if hasattr(value, "indices"):
            out += [value.indices, value.values, value.dense_shape]
        elif hasattr(value, "row_splits"):
            out += [value.values, value.row_splits]
        else:
            out.append(value)
    return out


@pytest.fixture(params=["protobuf", "bytes"])
def reader(request, monkeypatch):
    """Batches of Examples read by protobuf (as small batches are) or from their bytes (large ones)."""
    monkeypatch.setattr(parsing, "WIRE_BATCH", 1 if request.param == "bytes" else 1 << 30)
    return request.param


def test_parse_example_v2_batch(reader):
    def build(tf):
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        return flat(tf.io.parse_example(s, spec(tf)))

    check(build, {"s:0": BATCH})


def test_parse_example_v2_constants_fold_under_jit():
    check(lambda tf: flat(tf.io.parse_example(tf.constant(BATCH), spec(tf))))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_parse_single_example_v2(index):
    def build(tf):
        s = tf.compat.v1.placeholder(tf.string, [], name="s")
        return flat(tf.io.parse_single_example(s, spec(tf)))

    check(build, {"s:0": BATCH[index]})


def test_parse_example_v1_and_single_v1(reader):
    """Graphs from TF before 1.14 hold the first ops (keys as inputs, or as attributes)."""

    def build(tf):
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        v1 = tf.raw_ops.ParseExample(
            serialized=s, names=[], sparse_keys=["b", "s"], dense_keys=["a", "c", "d"],
            dense_defaults=[tf.zeros([0]), tf.constant(["zz"]), tf.constant(-1.0)],
            sparse_types=[tf.int64, tf.string], dense_shapes=[[2], [1], [None]])
        single = tf.raw_ops.ParseSingleExample(
            serialized=s[1], dense_defaults=[tf.zeros([0]), tf.constant([[7, 8]], tf.int64)], num_sparse=1,
            sparse_keys=["b"], dense_keys=["a", "i"], sparse_types=[tf.int64], dense_shapes=[[2], [1, 2]])
        return [*(t for group in v1 for t in group), *(t for group in single for t in group)]

    check(build, {"s:0": BATCH})


def test_parse_example_errors_like_tf(reader):
    tf = get_tf()
    cases = [
        (lambda tf, s: tf.io.parse_example(s, {"a": tf.io.FixedLenFeature([3], tf.float32)}), BATCH, "fill shape"),
        (lambda tf, s: tf.io.parse_example(s, {"z": tf.io.FixedLenFeature([1], tf.float32)}), BATCH, "required"),
        (lambda tf, s: tf.io.parse_example(s, {"a": tf.io.VarLenFeature(tf.int64)}), BATCH, "float values"),
        (lambda tf, s: tf.io.parse_example(s, {"a": tf.io.VarLenFeature(tf.float32)}),
         np.array([b"garbage"], object), "not a tf.train.Example"),
    ]
    for build, values, match in cases:
        with pytest.raises(tf.errors.InvalidArgumentError):
            check(lambda tf, build=build: build(tf, tf.compat.v1.placeholder(tf.string, [None], name="s")), {"s:0": values})
        g = tf.Graph()
        with g.as_default():
            out = build(tf, tf.compat.v1.placeholder(tf.string, [None], name="s"))
            meta = tf.compat.v1.train.export_meta_graph(graph=g)
        graph = jaxmeta.import_meta_graph(meta)
        names = [t.name for t in tf.nest.flatten(out, expand_composites=True)]
        with pytest.raises(jaxmeta.GraphError, match=match):
            graph.function(names, feeds=["s:0"])({}, values)


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def entry(key: bytes, feature: bytes) -> bytes:
    """A map entry of `Features.feature`: its key's field, then its value's."""
    return field(1, field(1, key) + field(2, feature))


def raw_example(*entries: bytes) -> bytes:
    return field(1, b"".join(entries))


UNPACKED = raw_example(entry(b"a", field(2, b"".join(b"\x0d" + np.float32(v).tobytes() for v in (9, 8)))))
#: Encodings protobuf reads but does not write: the bytes reader leaves them to protobuf.
IRREGULAR = {
    "unpacked floats": UNPACKED,
    "unpacked ints": raw_example(entry(b"b", field(3, b"\x08" + varint(-5) + b"\x08\x07"))),
    "value before key": field(1, field(1, field(2, field(2, b"")) + field(1, b"d"))),
    "features twice": raw_example(entry(b"a", field(2, field(1, np.float32([1, 2]).tobytes())))) + raw_example(),
    "an unknown field": raw_example(entry(b"b", field(3, field(1, varint(4))))) + field(7, b"??"),
    "an entry without a value": raw_example(field(1, field(1, b"d"))),
    "a key that is not ASCII": example(a=[5.0, 6.0], **{"\u00e9t\u00e9": [1.0]}),  # protobuf checks its UTF-8
    "a list given twice": raw_example(entry(b"b", field(3, field(1, varint(4))) + field(3, field(1, varint(6))))),
}
EDGES = [
    example(a=[0.5, -0.0], b=[-1, 0, 300, -(1 << 31)], s=[b"", b"\x00\xff"], e=[(1 << 31) - 1]),
    raw_example(entry(b"a", field(2, field(1, np.float32([1, 2]).tobytes()))),
                entry(b"a", field(2, field(1, np.float32([3, 4]).tobytes())))),  # a key twice: the last counts
    b"",  # no features at all
    raw_example(entry(b"a", field(2, field(1, np.float32([1, 2]).tobytes()))), entry(b"c", b""),  # no list
                entry(b"d", field(2, b"")), entry(b"s", field(1, b"")), entry(b"b", field(3, b""))),  # empty lists
    example(a=[5.0, 6.0], **{"a" * 200: [b"long key"]}, m=np.arange(300.0)[:300]),
]


def test_parse_example_edge_encodings_like_tf(reader):
    """Ints of every size, empty lists and Examples, a key given twice, long keys and lists; and a
    batch with an encoding protobuf does not write (which the bytes reader leaves to protobuf)."""

    def build(tf):
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        features = dict(spec(tf), a=tf.io.FixedLenFeature([2], tf.float32, default_value=[-1.0, -2.0]))
        return flat(tf.io.parse_example(s, features)) + flat(tf.io.parse_example(s[:-1], features))

    check(build, {"s:0": np.array(EDGES * 4 + [UNPACKED], object)})


def test_bytes_reader_reads_what_protobuf_writes_and_only_that():
    keys = {"a", "b", "c", "d", "e", "i", "m", "s"}
    dtypes = {"a": np.float32, "b": np.int64, "c": object, "d": np.float32, "e": np.int64, "i": np.int64,
              "m": np.float32, "s": object}
    parser = parsing._Parser(type("Node", (), {"name": "p", "type": "ParseExampleV2", "inputs": []})(), [], [], [])
    strings = list(BATCH) + EDGES + [example(b=[(1 << 63) - 1, -(1 << 63), 1 << 40, -1], e=[-(1 << 35)])]
    wire = parsing._WireBatch(strings, keys)
    column = parser.messages(parser.examples(np.array(strings, object), np.array([], object)))
    for key, dtype in dtypes.items():
        got, want = wire.column(key, np.dtype(dtype), None), column(key, np.dtype(dtype))
        for name in ("present", "lengths", "values"):
            assert getattr(got, name).tolist() == getattr(want, name).tolist(), (key, name)
            assert getattr(got, name).dtype == getattr(want, name).dtype, (key, name)
    for what, data in IRREGULAR.items():
        example_pb2.Example.FromString(data)  # protobuf reads it
        with pytest.raises(parsing._NotCanonical):  # the batch goes to protobuf
            batch = parsing._WireBatch([data], keys)
            for key, dtype in dtypes.items():
                batch.column(key, np.dtype(dtype), None)
            pytest.fail(f"read {what} from the bytes")


@pytest.mark.parametrize("bad", [BATCH[0][:-3], field(1, varint(1 << 34)), b"\x0a\xff\xff\xff\xff\xff\xff"],
                         ids=["truncated", "huge-length", "overlong-varint"])
def test_a_broken_example_in_a_large_batch_is_named(bad):
    """Truncated, or a length past the end: the bytes reader hands the batch to protobuf, whose
    error names the example."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        out = flat(tf.io.parse_example(s, spec(tf)))
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function([t.name for t in out], feeds=["s:0"])
    batch = np.array(list(BATCH) * 8 + [bad] + list(BATCH), object)
    with pytest.raises(jaxmeta.GraphError, match="serialized example 24 is not a tf.train.Example"):
        f({}, batch)


CSV = np.array([b'1,2.5,"a,""b""",x', b"-3,,c,", b" 4 ,1e3,,z", b"5,nan,d,NA"], object)


def test_decode_csv():
    def build(tf):
        r = tf.compat.v1.placeholder(tf.string, [None], name="r")
        cols = tf.io.decode_csv(r, [[0], [1.5], ["dflt"], ["q"]], na_value="NA")
        wide = tf.io.decode_csv(r, [tf.constant([], tf.int64), [0.0]], select_cols=[0, 1])
        tab = tf.io.decode_csv(tf.constant([["1\t2", "3\t4"]]), [[0.0], tf.constant([0], tf.float64)],
                               field_delim="\t", use_quote_delim=False)
        return [*cols, *wide, *tab]

    check(build, {"r:0": CSV})


@pytest.mark.parametrize("record, match", [
    (b"1,2", "expected 3 fields"),
    (b"x,1,2", "not a valid int32"),
    (b"1,1_0,2", "not a valid float"),
    (b"1,,2", "required"),
    (b'1,"2,3', "quotes must come in pairs"),
    (b'1,a"b,3', "cannot have quotes"),
])
def test_decode_csv_errors_like_tf(record, match):
    tf = get_tf()

    def build(tf):
        r = tf.compat.v1.placeholder(tf.string, [None], name="r")
        return tf.io.decode_csv(r, [[0], tf.constant([], tf.float32), [0]])

    with pytest.raises(tf.errors.InvalidArgumentError):
        check(build, {"r:0": np.array([record], object)})
    g = tf.Graph()
    with g.as_default():
        outs = build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    with pytest.raises(jaxmeta.GraphError, match=match):
        graph.function([o.name for o in outs], feeds=["r:0"])({}, np.array([record], object))


def test_serialize_and_parse_tensor():
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, [2, 3], name="x")
        return [tf.io.serialize_tensor(x), tf.io.parse_tensor(tf.io.serialize_tensor(x), tf.float32),
                tf.io.serialize_tensor(tf.constant(7, tf.int64)), tf.io.serialize_tensor(tf.constant(["a", "bc"])),
                tf.io.parse_tensor(tf.io.serialize_tensor(tf.constant([["a"], ["bc"]])), tf.string)]

    check(build, {"x:0": np.arange(6, dtype=np.float32).reshape(2, 3)})


def test_decode_compressed():
    data = np.array([zlib.compress(b"hello" * 10), zlib.compress(b"")], object)
    gz = np.array(gzip.compress(b"tarkus"), object)

    def build(tf):
        z = tf.compat.v1.placeholder(tf.string, [2], name="z")
        g = tf.compat.v1.placeholder(tf.string, [], name="g")
        return [tf.io.decode_compressed(z, "ZLIB"), tf.io.decode_compressed(g, "GZIP"),
                tf.io.decode_compressed(tf.constant("plain"))]

    check(build, {"z:0": data, "g:0": gz})


def test_decompression_bomb_is_refused(monkeypatch):
    tf = get_tf()
    from jaxmeta.ops import parsing

    monkeypatch.setattr(parsing, "MAX_STRING_BYTES", 1000)
    g = tf.Graph()
    with g.as_default():
        z = tf.compat.v1.placeholder(tf.string, [], name="z")
        out = tf.io.decode_compressed(z, "ZLIB")
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function([out.name], feeds=["z:0"])
    with pytest.raises(jaxmeta.GraphError, match="more than jaxmeta's limit"):
        f({}, np.array(zlib.compress(b"\0" * 100_000), object))
    with pytest.raises(jaxmeta.GraphError, match="truncated"):
        f({}, np.array(zlib.compress(b"abc" * 100)[:-5], object))


def sequence_example(context: dict, lists: dict) -> bytes:
    """A serialized tf.train.SequenceExample: context features, and lists of steps per key."""
    seq = example_pb2.SequenceExample()
    seq.context.CopyFrom(example_pb2.Example.FromString(example(**context)).features)
    for key, steps in lists.items():
        feature_list = seq.feature_lists.feature_list[key]
        for step in steps:
            feature_list.feature.add().CopyFrom(example_pb2.Example.FromString(example(x=step)).features.feature["x"])
    return seq.SerializeToString()


F = np.float32
SEQUENCES = np.array([
    sequence_example({"len": [3], "len2": [3, 4]},
                     {"tok": [[1], [2], [3]], "vec": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                      "v": [[1.0], np.zeros(0, F), [2.0, 3.0]], "v2": [[1.0], [2.0, 3.0]], "w": [[b"a"], [b"b", b"c"]]}),
    sequence_example({}, {"tok": [[4]], "v": [[7.0]]}),
    sequence_example({"len": [9]}, {"tok": [], "vec": [], "w": [[b"z"]]}),
], object)


def sequence_specs(tf):
    context = {"len": tf.io.FixedLenFeature([], tf.int64, default_value=0),
               "r": tf.io.RaggedFeature(tf.int64, value_key="len2"), "cs": tf.io.VarLenFeature(tf.int64)}
    lists = {"tok": tf.io.FixedLenSequenceFeature([], tf.int64),
             "vec": tf.io.FixedLenSequenceFeature([2], tf.float32, allow_missing=True),
             "v": tf.io.VarLenFeature(tf.float32), "w": tf.io.VarLenFeature(tf.string),
             "rv": tf.io.RaggedFeature(tf.float32, value_key="v2")}
    return context, lists


def op_outputs(tf, graph, op_type):
    """Every output of every `op_type` op in `graph` (raw: ragged splits and lengths included), but
    the row splits a sequence op makes for one example: TF's kernel leaves those scalars unwritten
    (its Python drops them), so TF's value is whatever the memory held (jaxmeta's is 0)."""
    unwritten = {"context_ragged_row_splits", "feature_list_ragged_outer_splits"}
    out = []
    for op in graph.get_operations():
        if op.type != op_type:
            continue
        args = []
        for arg in op.op_def.output_arg:
            count = (op.get_attr(arg.number_attr) if arg.number_attr
                     else len(op.get_attr(arg.type_list_attr)) if arg.type_list_attr else 1)
            args += [arg.name] * count
        scalar = op.inputs[0].shape.rank == 0
        out += [t for t, arg in zip(op.outputs, args) if not (scalar and arg in unwritten)]
    return out


def test_parse_sequence_example_v2():
    def build(tf):
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        tf.io.parse_sequence_example(s, *sequence_specs(tf))
        tf.io.parse_single_sequence_example(s[0], *sequence_specs(tf))
        tf.io.parse_single_sequence_example(s[2], *sequence_specs(tf))
        return op_outputs(tf, tf.compat.v1.get_default_graph(), "ParseSequenceExampleV2")

    check(build, {"s:0": SEQUENCES})


def test_parse_example_v2_raw_outputs(reader):
    """The ragged row splits parse_single_example drops (a scalar input) compare too."""

    def build(tf):
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        tf.io.parse_example(s, spec(tf))
        tf.io.parse_single_example(s[0], spec(tf))
        return op_outputs(tf, tf.compat.v1.get_default_graph(), "ParseExampleV2")

    check(build, {"s:0": BATCH})


def test_parse_sequence_example_v1_ops():
    """TF1's ops: ParseSingleSequenceExample (keys as inputs) and the batched ParseSequenceExample."""

    def build(tf):
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        args = dict(context_dense_defaults=[tf.constant(0, tf.int64)], context_sparse_types=[tf.int64],
                    feature_list_dense_types=[tf.int64, tf.float32], feature_list_sparse_types=[tf.float32, tf.string],
                    context_dense_shapes=[[]], feature_list_dense_shapes=[[], [2]])
        for i in range(3):
            tf.raw_ops.ParseSingleSequenceExample(
                serialized=s[i], feature_list_dense_missing_assumed_empty=["vec"], context_sparse_keys=["cs"],
                context_dense_keys=["len"], feature_list_sparse_keys=["v", "w"], feature_list_dense_keys=["tok", "vec"],
                debug_name="", **args)
        tf.raw_ops.ParseSequenceExample(
            serialized=s, debug_name=[], feature_list_dense_missing_assumed_empty=["vec"], context_sparse_keys=["cs"],
            context_dense_keys=["len"], feature_list_sparse_keys=["v", "w"], feature_list_dense_keys=["tok", "vec"],
            Ncontext_sparse=1, Ncontext_dense=1, Nfeature_list_sparse=2, Nfeature_list_dense=2, **args)
        g = tf.compat.v1.get_default_graph()
        return op_outputs(tf, g, "ParseSingleSequenceExample") + op_outputs(tf, g, "ParseSequenceExample")

    check(build, {"s:0": SEQUENCES})


def test_parse_sequence_example_missing_list_is_an_error():
    tf = get_tf()

    def build(tf):
        s = tf.compat.v1.placeholder(tf.string, [None], name="s")
        return flat(tf.io.parse_sequence_example(s, {}, {"vec": tf.io.FixedLenSequenceFeature([2], tf.float32)})[1])

    with pytest.raises(tf.errors.InvalidArgumentError):
        check(build, {"s:0": SEQUENCES})
    g = tf.Graph()
    with g.as_default():
        outs = build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    with pytest.raises(jaxmeta.GraphError, match="feature list 'vec' is required"):
        jaxmeta.import_meta_graph(meta).function([o.name for o in outs], feeds=["s:0"])({}, SEQUENCES)
