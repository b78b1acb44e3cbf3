"""`tf.contrib`'s kernels (TF 1.x), which TF 2 can neither build nor run.

A graph holding one is made as a TF1 `.meta` would hold it: a stand-in node exported by TF,
rewritten into the contrib op, with the op's definition (TF 1.15's registration) in the
MetaGraphDef's op list. Where TF 2 still has the same kernel under another name (the projective
transform, `SparseCross`), TF's values are the truth; otherwise a NumPy port of TF 1.15's CPU
kernel, loop by loop, is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import text_format
from oracle import get_tf, ph

import jaxmeta

pytestmark = pytest.mark.oracle

_CROSS = """name: "SparseFeatureCross" input_arg { name: "indices" type: DT_INT64 number_attr: "N" }
    input_arg { name: "values" type_list_attr: "sparse_types" } input_arg { name: "shapes" type: DT_INT64 number_attr: "N" }
    input_arg { name: "dense" type_list_attr: "dense_types" } output_arg { name: "output_indices" type: DT_INT64 }
    output_arg { name: "output_values" type_attr: "out_type" } output_arg { name: "output_shape" type: DT_INT64 }
    attr { name: "N" type: "int" has_minimum: true } attr { name: "hashed_output" type: "bool" }
    attr { name: "num_buckets" type: "int" has_minimum: true } attr { name: "sparse_types" type: "list(type)" }
    attr { name: "dense_types" type: "list(type)" } attr { name: "out_type" type: "type" }
    attr { name: "internal_type" type: "type" }"""

# TF 1.15's registrations (tensorflow/contrib/*/ops/*.cc), as a .meta's stripped op list has them.
OP_DEFS = {
    "GatherTree": """name: "GatherTree" input_arg { name: "step_ids" type_attr: "T" }
        input_arg { name: "parent_ids" type_attr: "T" } input_arg { name: "max_sequence_lengths" type: DT_INT32 }
        input_arg { name: "end_token" type_attr: "T" } output_arg { name: "beams" type_attr: "T" }
        attr { name: "T" type: "type" allowed_values { list { type: DT_INT32 } } }""",
    "Resampler": """name: "Resampler" input_arg { name: "data" type_attr: "T" } input_arg { name: "warp" type_attr: "T" }
        output_arg { name: "output" type_attr: "T" }
        attr { name: "T" type: "type" allowed_values { list { type: DT_HALF type: DT_FLOAT type: DT_DOUBLE } } }""",
    "ResamplerGrad": """name: "ResamplerGrad" input_arg { name: "data" type_attr: "T" }
        input_arg { name: "warp" type_attr: "T" } input_arg { name: "grad_output" type_attr: "T" }
        output_arg { name: "grad_data" type_attr: "T" } output_arg { name: "grad_warp" type_attr: "T" }
        attr { name: "T" type: "type" allowed_values { list { type: DT_HALF type: DT_FLOAT type: DT_DOUBLE } } }""",
    "ImageProjectiveTransform": """name: "ImageProjectiveTransform" input_arg { name: "images" type_attr: "dtype" }
        input_arg { name: "transforms" type: DT_FLOAT } output_arg { name: "transformed_images" type_attr: "dtype" }
        attr { name: "dtype" type: "type" } attr { name: "interpolation" type: "string" }""",
    "SparseFeatureCross": _CROSS,
    "SparseFeatureCrossV2": _CROSS.replace('name: "SparseFeatureCross"', 'name: "SparseFeatureCrossV2"')
    + ' attr { name: "hash_key" type: "int" }',
}


def _contrib_meta(tf, build, rewrites):
    """`build(tf)`'s graph as a MetaGraphDef, with nodes rewritten: `rewrites` maps a node name to
    (op type, attrs to set, inputs to keep or None for all)."""
    g = tf.Graph()
    with g.as_default():
        build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    for name, (op_type, attrs, keep) in rewrites.items():
        node = next(n for n in meta.graph_def.node if n.name == name)
        node.op = op_type
        node.attr.clear()
        for key, value in attrs.items():
            if isinstance(value, str):
                node.attr[key].s = value.encode()
            elif isinstance(value, bool):
                node.attr[key].b = value
            elif isinstance(value, int):
                node.attr[key].i = value
            else:
                node.attr[key].type = tf.as_dtype(value).as_datatype_enum
        if keep is not None:
            inputs = list(node.input)
            del node.input[:]
            node.input.extend(inputs[i] for i in keep)
        if op_type in OP_DEFS:
            text_format.Parse(OP_DEFS[op_type], meta.meta_info_def.stripped_op_list.op.add())
    return meta


def _both(f, *args):
    """`f` run as it is and under jax.jit."""
    return [jax.tree_util.tree_map(np.asarray, fn({}, *args)) for fn in (f, jax.jit(f))]


# -- GatherTree -----------------------------------------------------------------------------------


def _gather_tree_reference(step_ids, parent_ids, lengths, end_token=None):
    """TF 1.15's CPU kernel (beam_search_ops.cc); `end_token` None: the first version, whose
    lengths are per beam."""
    time, batch, width = step_ids.shape
    beams = np.full(step_ids.shape, -1 if end_token is None else end_token, np.int32)
    for b in range(batch):
        for k in range(width):
            n = min(time, lengths[b] if end_token is not None else lengths[b, k])
            if n <= 0:
                continue
            beams[n - 1, b, k] = step_ids[n - 1, b, k]
            parent = parent_ids[n - 1, b, k]
            for level in range(n - 2, -1, -1):
                beams[level, b, k] = step_ids[level, b, parent]
                parent = parent_ids[level, b, parent]
            if end_token is not None:
                finished = False
                for t in range(n):
                    if finished:
                        beams[t, b, k] = end_token
                    elif beams[t, b, k] == end_token:
                        finished = True
    return beams


def _gather_tree_graph(tf, first_version, shape):
    def build(tf):
        ids = tf.compat.v1.placeholder(tf.int32, shape, name="step_ids")
        parents = tf.compat.v1.placeholder(tf.int32, shape, name="parent_ids")
        lengths = tf.compat.v1.placeholder(tf.int32, shape[1:] if first_version else shape[1:2], name="lengths")
        inputs = [ids, parents, lengths] if first_version else [ids, parents, lengths, tf.constant(2, name="end")]
        tf.raw_ops.IdentityN(input=inputs, name="beams")

    return jaxmeta.import_meta_graph(_contrib_meta(tf, build, {"beams": ("GatherTree", {"T": tf.int32}, None)}))


@pytest.mark.parametrize("first_version", [False, True], ids=["v2", "v1"])
def test_gather_tree(first_version):
    tf = get_tf()
    time, batch, width = 6, 3, 4
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 9, (time, batch, width)).astype(np.int32)
    parents = rng.integers(0, width, (time, batch, width)).astype(np.int32)
    # lengths past the time axis, of 0 and in between; end tokens (2) inside the beams
    lengths = (np.array([[6, 9, 0, 3], [1, 4, 6, 2], [5, 5, 7, 0]], np.int32) if first_version
               else np.array([4, 9, 0], np.int32))
    f = _gather_tree_graph(tf, first_version, [time, batch, width]).function(
        "beams:0", feeds=["step_ids:0", "parent_ids:0", "lengths:0"])
    want = _gather_tree_reference(ids, parents, lengths, None if first_version else 2)
    assert (ids == 2).any() and not (want == -1).all()
    for got in _both(f, ids, parents, lengths):
        np.testing.assert_array_equal(got, want)


def test_gather_tree_invalid_parent():
    """TF's CPU kernel refuses a parent outside the beam; under jit (ids unknown when tracing)
    that step and the earlier ones are -1, as on TF's GPU."""
    tf = get_tf()
    ids = np.arange(8, dtype=np.int32).reshape(4, 1, 2) + 10
    parents = np.array([[[0, 1]], [[1, 0]], [[0, 5]], [[1, 0]]], np.int32)  # beam 0 follows the 5 to step 1
    lengths = np.array([4], np.int32)
    f = _gather_tree_graph(tf, False, [4, 1, 2]).function("beams:0", feeds=["step_ids:0", "parent_ids:0", "lengths:0"])
    with pytest.raises(jaxmeta.GraphError, match=r"'beams' \(GatherTree\): invalid parent id at .* == \(0, 1, 0\)"):
        f({}, ids, parents, lengths)
    got = np.asarray(jax.jit(f)({}, ids, parents, lengths))
    np.testing.assert_array_equal(got[:, 0, 0], [-1, -1, 15, 16])
    np.testing.assert_array_equal(got[:, 0, 1], [11, 12, 14, 17])


# -- Resampler ------------------------------------------------------------------------------------


def _resampler_reference(data, warp, grad_output=None):
    """TF 1.15's CPU kernels (resampler_ops.cc): the output, or the gradients given `grad_output`."""
    batch, height, width, channels = data.shape
    points = warp.reshape(batch, -1, 2)
    out = np.zeros((batch, points.shape[1], channels), data.dtype)
    grad_data, grad_warp = np.zeros_like(data), np.zeros_like(points)
    grad = None if grad_output is None else grad_output.reshape(out.shape)
    one = data.dtype.type(1)

    def get(b, x, y, c):
        return data[b, y, x, c] if 0 <= x <= width - 1 and 0 <= y <= height - 1 else data.dtype.type(0)

    def add(b, x, y, c, value):
        if 0 <= x <= width - 1 and 0 <= y <= height - 1:
            grad_data[b, y, x, c] += value

    for b in range(batch):
        for s in range(points.shape[1]):
            x, y = points[b, s]
            if not (x > -1 and y > -1 and x < width and y < height):
                continue
            fx, fy = int(np.floor(np.float32(x))), int(np.floor(np.float32(y)))
            cx, cy = fx + 1, fy + 1
            dx, dy = data.dtype.type(cx) - x, data.dtype.type(cy) - y
            for c in range(channels):
                a, d, e, h = get(b, fx, fy, c), get(b, cx, cy, c), get(b, fx, cy, c), get(b, cx, fy, c)
                if grad is None:
                    out[b, s, c] = dx * dy * a + (one - dx) * (one - dy) * d + dx * (one - dy) * e + (one - dx) * dy * h
                    continue
                g = grad[b, s, c]
                grad_warp[b, s, 0] += g * ((one - dy) * (d - e) + dy * (h - a))
                grad_warp[b, s, 1] += g * ((one - dx) * (d - h) + dx * (e - a))
                add(b, fx, fy, c, g * dx * dy)
                add(b, cx, cy, c, g * (one - dx) * (one - dy))
                add(b, fx, cy, c, g * dx * (one - dy))
                add(b, cx, fy, c, g * (one - dx) * dy)
    if grad is None:
        return out.reshape(*warp.shape[:-1], channels)
    return grad_data, grad_warp.reshape(warp.shape)


def _resampler_inputs(dtype):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((2, 5, 6, 3)).astype(dtype)
    warp = rng.uniform(-1.6, 6.8, (2, 4, 7, 2)).astype(dtype)
    # on the pixel grid, on the padded border's edges, just inside them, and NaN
    warp[0, 0, :6] = [[0, 0], [5, 4], [-1, 2], [2, -1], [6, 1], [-0.999, 4.999]]
    warp[1, 3, 6] = [np.nan, 1]
    return data, warp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resampler_and_its_gradient(dtype):
    tf = get_tf()
    data, warp = _resampler_inputs(dtype)
    grad = np.random.default_rng(2).standard_normal((2, 4, 7, 3)).astype(dtype)

    def build(tf):
        d, w, g = ph(tf, "data", data), ph(tf, "warp", warp), ph(tf, "grad", grad)
        tf.raw_ops.IdentityN(input=[d, w], name="resampled")
        tf.raw_ops.IdentityN(input=[d, w, g], name="grads")

    meta = _contrib_meta(tf, build, {"resampled": ("Resampler", {"T": dtype}, None),
                                     "grads": ("ResamplerGrad", {"T": dtype}, None)})
    graph = jaxmeta.import_meta_graph(meta)
    want_out = _resampler_reference(data, warp)
    want_data, want_warp = _resampler_reference(data, warp, grad)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    with jax.enable_x64(dtype == np.float64):
        f = graph.function(["resampled:0", "grads:0", "grads:1"], feeds=["data:0", "warp:0", "grad:0"])
        for out, grad_data, grad_warp in _both(f, data, warp, grad):
            np.testing.assert_allclose(out, want_out, **tol)
            np.testing.assert_allclose(grad_data, want_data, **tol)
            np.testing.assert_allclose(grad_warp, want_warp, **tol)
        # jax.grad through the forward op agrees with the gradient op
        forward = graph.function("resampled:0", feeds=["data:0", "warp:0"])
        vjp = jax.vjp(lambda d, w: forward({}, d, w), jnp.asarray(data), jnp.asarray(warp))[1](jnp.asarray(grad))
        np.testing.assert_allclose(vjp[0], want_data, **tol)
        np.testing.assert_allclose(vjp[1], want_warp, **tol)
    assert want_out[1, 3, 6].tolist() == [0, 0, 0]  # the NaN point


# -- tf.contrib.image.transform -------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["NEAREST", "BILINEAR", None])
def test_contrib_image_projective_transform(interpolation):
    """The contrib op is core's V2 at the input's size with zeros outside: TF's V2 is the oracle.
    Before TF 1.4 it had no interpolation attribute and was nearest."""
    tf = get_tf()
    images = np.random.default_rng(3).uniform(0, 255, (2, 7, 9, 3)).astype(np.float32)
    angle = np.float32(0.4)
    c, s = np.cos(angle), np.sin(angle)
    transforms = np.array([[c, -s, 3.0, s, c, -2.0, 0.0, 0.0], [1.1, 0.2, -1.5, -0.1, 0.9, 0.5, 0.01, -0.02]],
                          np.float32)

    def build(tf):
        x, t = ph(tf, "images", images), ph(tf, "transforms", transforms)
        tf.raw_ops.ImageProjectiveTransformV2(images=x, transforms=t, output_shape=[7, 9], fill_mode="CONSTANT",
                                              interpolation=interpolation or "NEAREST", name="out")

    g = tf.Graph()
    with g.as_default():
        build(tf)
        with tf.compat.v1.Session(graph=g) as sess:
            want = sess.run("out:0", {"images:0": images, "transforms:0": transforms})
    attrs = {"dtype": np.float32} | ({"interpolation": interpolation} if interpolation else {})
    meta = _contrib_meta(tf, build, {"out": ("ImageProjectiveTransform", attrs, [0, 1])})
    f = jaxmeta.import_meta_graph(meta).function("out:0", feeds=["images:0", "transforms:0"])
    for got in _both(f, images, transforms):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


# -- tf.contrib.layers' feature crosses -----------------------------------------------------------


def _cross_graph(tf, op_type, hashed, buckets):
    """A cross of a sparse string column, a sparse int64 column and a dense string column."""
    s_idx = np.array([[0, 0], [0, 1], [2, 0]], np.int64)
    s_val = np.array([b"x", b"y", b"z"], object)
    i_idx = np.array([[0, 0], [1, 0], [2, 0], [2, 1]], np.int64)
    i_val = np.array([7, -3, 2**40, 0], np.int64)
    dense = np.array([[b"p"], [b"q"], [b"r"]], object)

    def build(tf):
        shape = tf.constant([3, 2], tf.int64)
        tf.raw_ops.SparseCross(indices=[tf.constant(s_idx), tf.constant(i_idx)],
                               values=[tf.constant(s_val, tf.string), tf.constant(i_val)], shapes=[shape, shape],
                               dense_inputs=[tf.constant(dense, tf.string)], hashed_output=hashed,
                               num_buckets=buckets, hash_key=0xDECAFCAFFE,
                               out_type=tf.int64 if hashed else tf.string,
                               internal_type=tf.int64, name="cross")  # an int64 column: tf.sparse.cross's choice

    g = tf.Graph()
    with g.as_default():
        build(tf)
        with tf.compat.v1.Session(graph=g) as sess:
            want = sess.run(["cross:0", "cross:1", "cross:2"])
        node = g.get_operation_by_name("cross").node_def
    attrs = {k: v for k, v in node.attr.items() if op_type == "SparseFeatureCrossV2" or k != "hash_key"}
    meta = _contrib_meta(tf, build, {"cross": (op_type, {}, None)})
    target = next(n for n in meta.graph_def.node if n.name == "cross")
    for key, value in attrs.items():
        target.attr[key].CopyFrom(value)
    features = [[[b"x", b"y"], [7], [b"p"]], [[], [-3], [b"q"]], [[b"z"], [2**40, 0], [b"r"]]]
    return jaxmeta.import_meta_graph(meta), want, features


@pytest.mark.parametrize("hashed,buckets", [(False, 0), (True, 1000), (True, 0)])
def test_sparse_feature_cross_v2_is_sparse_cross(hashed, buckets):
    graph, want, _ = _cross_graph(get_tf(), "SparseFeatureCrossV2", hashed, buckets)
    with jax.enable_x64(True), jaxmeta.Session(graph, jit=False) as sess:  # unbucketed hashes need int64
        got = sess.run(["cross:0", "cross:1", "cross:2"])
    for g, w in zip(got, want):
        assert np.asarray(g).tolist() == np.asarray(w).tolist()


@pytest.mark.parametrize("buckets", [1000, 0])
def test_sparse_feature_cross_first_version(buckets):
    """The first version's hash: HashCombine from a fixed seed over each feature's Fingerprint64
    (TF's `tf.fingerprint`) or int64 value."""
    tf = get_tf()
    graph, want, features = _cross_graph(tf, "SparseFeatureCross", True, buckets)
    strings = sorted({v for row in features for col in row for v in col if isinstance(v, bytes)})
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        prints = sess.run(tf.fingerprint(tf.constant(strings, tf.string)))
    fingerprint = {s: int.from_bytes(p.tobytes(), "little") for s, p in zip(strings, prints)}

    def combine(a, b):  # int64 arithmetic of contrib's HashCombine, wrapping
        m = (1 << 64) - 1
        signed = a - (1 << 64) if a >= 1 << 63 else a
        return (a ^ ((b + 0x9E3779B97F4A7800 + (signed << 10) + (signed >> 4)) & m)) & m

    values = []
    for row in features:
        for combo in __import__("itertools").product(*row):
            h = 0xDECAFCAFFE
            for v in combo:
                h = combine(h, fingerprint[v] if isinstance(v, bytes) else v & ((1 << 64) - 1))
            values.append(h % buckets if buckets else h % ((1 << 63) - 1))
    with jax.enable_x64(True), jaxmeta.Session(graph, jit=False) as sess:
        indices, got, shape = sess.run(["cross:0", "cross:1", "cross:2"])
    assert np.asarray(indices).tolist() == want[0].tolist() and np.asarray(shape).tolist() == want[2].tolist()
    assert np.asarray(got).tolist() == values
    assert values != want[1].tolist()  # not V2's hash


# -- a beam-search decoder, as tf.contrib.seq2seq builds one --------------------------------------


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_beam_search_decoder_ends_in_gather_tree(tmp_path, v2):
    """A GRU decoder's beam search in a while loop (top-k over beams x vocabulary, finished beams
    extended by the end token only, stopping when every beam has ended), whose step and parent
    ids GatherTree traces back, as `tf.contrib.seq2seq.BeamSearchDecoder` does; from a .meta and
    checkpoint. TF runs the loop; the kernel's port gives the last step. In TF1's control flow
    and in TF 2's (what `tf.compat.v1` graphs built with TF 2 get by default)."""
    tf = get_tf()
    batch, beams, vocab, units, end, max_len = 2, 3, 7, 8, 1, 9
    memory = np.random.default_rng(4).standard_normal((batch, units)).astype(np.float32)
    g = tf.Graph()
    if v2:
        tf.compat.v1.enable_control_flow_v2()
    with g.as_default():
        tf.compat.v1.set_random_seed(1)
        mem = tf.compat.v1.placeholder(tf.float32, [batch, units], name="memory")
        embedding = tf.compat.v1.get_variable("embedding", [vocab, units])
        cell = tf.compat.v1.nn.rnn_cell.GRUCell(units, name="gru")
        project = tf.compat.v1.layers.Dense(vocab, name="project",
                                            bias_initializer=tf.constant_initializer([0, 1.5, 0, 0, 0, 0, 0]))
        state0 = tf.reshape(tf.tile(mem[:, None], [1, beams, 1]), [batch * beams, units])
        scores0 = tf.constant([[0.0] + [-np.inf] * (beams - 1)] * batch)
        rows = tf.tile(tf.range(batch)[:, None], [1, beams])

        def pick(x, parents):  # each beam's row of x from its parent beam
            return tf.gather_nd(x, tf.stack([rows, parents], axis=-1))

        def body(t, tokens, scores, finished, lengths, state, ids_ta, parents_ta):
            out, state = cell(tf.gather(embedding, tf.reshape(tokens, [-1])), state)
            logp = tf.reshape(tf.nn.log_softmax(project(out)), [batch, beams, vocab])
            only_end = tf.one_hot(end, vocab, on_value=0.0, off_value=-np.inf)
            logp = tf.where(tf.tile(finished[..., None], [1, 1, vocab]), tf.broadcast_to(only_end, tf.shape(logp)), logp)
            top, index = tf.nn.top_k(tf.reshape(scores[..., None] + logp, [batch, beams * vocab]), k=beams)
            parents, tokens = index // vocab, index % vocab
            was_finished = pick(finished, parents)
            lengths = pick(lengths, parents) + tf.cast(~was_finished, tf.int32)
            state = tf.reshape(pick(tf.reshape(state, [batch, beams, units]), parents), [batch * beams, units])
            return (t + 1, tokens, top, was_finished | tf.equal(tokens, end), lengths, state,
                    ids_ta.write(t, tokens), parents_ta.write(t, parents))

        def cond(t, tokens, scores, finished, *_):
            return (t < max_len) & ~tf.reduce_all(finished)

        arrays = [tf.TensorArray(tf.int32, size=0, dynamic_size=True) for _ in range(2)]
        loop = tf.compat.v1.while_loop(cond, body, [0, tf.zeros([batch, beams], tf.int32), scores0,
                                                     tf.zeros([batch, beams], tf.bool), tf.zeros([batch, beams], tf.int32),
                                                     state0, *arrays])
        step_ids = tf.identity(loop[6].stack(), name="step_ids")
        parent_ids = tf.identity(loop[7].stack(), name="parent_ids")
        lengths = tf.reduce_max(loop[4], axis=1, name="lengths")
        tf.raw_ops.IdentityN(input=[step_ids, parent_ids, lengths, tf.constant(end)], name="beams")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            want_ids, want_parents, want_lengths = sess.run([step_ids, parent_ids, lengths], {mem: memory})
            prefix = saver.save(sess, str(tmp_path / "decoder"))
        meta = tf.compat.v1.train.export_meta_graph(graph=g, saver_def=saver.saver_def)
    tf.compat.v1.disable_control_flow_v2()
    assert want_ids.shape[0] < max_len  # every beam ended early: the loop's trip count came from the data
    node = next(n for n in meta.graph_def.node if n.name == "beams")
    node.op = "GatherTree"
    node.attr.clear()
    node.attr["T"].type = tf.int32.as_datatype_enum
    text_format.Parse(OP_DEFS["GatherTree"], meta.meta_info_def.stripped_op_list.op.add())
    graph = jaxmeta.import_meta_graph(meta)
    variables = graph.saver.restore(prefix)
    fetches = ["beams:0", "step_ids:0", "parent_ids:0"]
    f = graph.function(fetches, feeds=["memory:0"])
    want = _gather_tree_reference(want_ids, want_parents, want_lengths, end)
    with jaxmeta.Session(graph, variables) as sess:  # jit: finds the loop's size is the data's, and stages
        session_out = sess.run(fetches, {"memory:0": memory})
    for beams_out, ids, parents in (f(variables, memory), session_out):
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(parents, want_parents)
        np.testing.assert_array_equal(beams_out, want)
    # A jitted function cannot have TF's shapes, which depend on the data: it says so.
    with pytest.raises(jaxmeta.RunTimeValuesError, match="grows in a while loop that may stop before its bound"):
        jax.jit(f)(variables, memory)
