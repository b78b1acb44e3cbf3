"""`import_meta_graph` reports what TensorFlow reports for the same MetaGraphDef.

The committed fixtures (`tests/fixtures/graphs/`, `examples/model/`) carry TF's own view of each file
(`NAME.tf.json`, written by `tests/fixtures/generate.py`), so these tests run without TensorFlow; the
`oracle` tests regenerate the files with live TF and compare directly.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import jaxmeta
from jaxmeta import GraphError
from jaxmeta.proto import meta_graph_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "fixtures"))

import views  # noqa: E402

GRAPHS = os.path.join(HERE, "fixtures", "graphs")
EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "model")
MNIST_META = os.path.join(EXAMPLE, "mnist_mlp-100.meta")

FIXTURES = {
    "mnist_mlp": MNIST_META,
    "devices": os.path.join(GRAPHS, "devices.meta"),
    "partitioned": os.path.join(GRAPHS, "partitioned.meta"),
    "control_flow": os.path.join(GRAPHS, "control_flow.meta"),
    "text_export": os.path.join(GRAPHS, "text_export.meta.pbtxt"),
    "summaries": os.path.join(GRAPHS, "summaries.meta"),
}
SCOPES = {"unscoped": None, "scoped": "net"}


def stem(meta: str) -> str:
    return meta[: -len(".meta.pbtxt")] if meta.endswith(".meta.pbtxt") else meta[: -len(".meta")]


def tf_report(name: str) -> dict:
    with open(stem(FIXTURES[name]) + ".tf.json") as f:
        return json.load(f)


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(stem(FIXTURES[name]) + ".expected.npz") as data:
        return dict(data)


def as_tf_reports(view: dict, scope: str | None) -> dict:
    """jaxmeta's view with the one place jaxmeta departs from TF on purpose undone.

    TF's `import_meta_graph` passes plain `bytes_list` items through `prepend_name_scope`, so under
    `import_scope="net"` a hyper-parameter `b'lr=0.01'` comes back as the str `'net/lr=0.01'`. jaxmeta
    keeps such values as the bytes that were saved (the foundation issue's contract).
    """
    if not scope:
        return view
    view = json.loads(json.dumps(view))
    for items in view["collections"].values():
        for i, item in enumerate(items):
            if "bytes" in item:
                items[i] = {"str": f"{scope}/" + eval(item["bytes"]).decode()}  # noqa: S307 (repr of bytes)
    return view


def assert_same_view(got: dict, want: dict, where: str) -> None:
    """Field by field, so a failure names the field, collection or node that differs."""
    assert sorted(got) == sorted(want), where
    for field in want:
        if field in ("nodes", "collections"):
            assert sorted(got[field]) == sorted(want[field]), f"{where}: {field} keys"
            for key in want[field]:
                assert got[field][key] == want[field][key], f"{where}: {field}[{key!r}]"
        else:
            assert got[field] == want[field], f"{where}: {field}"


# -- jaxmeta's view equals TF's recorded view ------------------------------------------------------
@pytest.mark.parametrize("scope_key", sorted(SCOPES))
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_view_matches_tensorflow(name, scope_key):
    scope = SCOPES[scope_key]
    graph = jaxmeta.import_meta_graph(FIXTURES[name], import_scope=scope)
    got = as_tf_reports(views.jaxmeta_view(graph), scope)
    assert_same_view(got, tf_report(name)[scope_key], f"{name} ({scope_key})")


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_same_scope_twice_is_made_unique(name):
    graph = jaxmeta.import_meta_graph(FIXTURES[name], import_scope="net")
    jaxmeta.import_meta_graph(FIXTURES[name], import_scope="net", graph=graph)
    got = as_tf_reports(views.jaxmeta_view(graph), "net")
    want = tf_report(name)["twice"]
    # The second import's bytes items are scoped `net_1/...` by TF; undo per item.
    for items in want["collections"].values():
        for i, item in enumerate(items):
            if "str" in item and item["str"].startswith("net_1/"):
                items[i] = {"str": "net/" + item["str"][len("net_1/"):]}
    assert sorted(got["nodes"]) == want["node_names"]
    assert got["node_count"] == want["node_count"]
    assert got["op_histogram"] == want["op_histogram"]
    assert got["collection_keys"] == want["collection_keys"]
    assert got["collections"] == want["collections"]
    # TF's import returns the last import's Saver; the graph keeps the first SaverDef.
    assert want["saver_def"]["restore_op_name"] == "net_1/save/restore_all"
    assert graph.saver_def.restore_op_name == "net/save/restore_all"


def test_hparams_keep_their_bytes_under_a_scope():
    graph = jaxmeta.import_meta_graph(MNIST_META, clear_devices=True, import_scope="net")
    assert [t.name for t in graph.get_collection("logits")] == ["net/softmax_linear/add:0"]
    assert graph.get_collection("hparams") == [b"lr=0.01"]
    assert graph.get_collection("hidden_sizes") == [32, 16]
    assert graph.get_collection("learning_rates") == pytest.approx([0.01, 0.5])
    assert [t.name for t in graph.get_collection("inputs")] == ["net/images:0", "net/labels:0"]
    assert [op.name for op in graph.get_collection("train_op")] == ["net/GradientDescent"] * 2


# -- sources: text format, messages, bytes ---------------------------------------------------------
def test_text_format_equals_binary_export():
    text = jaxmeta.import_meta_graph(FIXTURES["text_export"])
    binary = jaxmeta.import_meta_graph(MNIST_META)
    assert sorted(text.nodes) == sorted(binary.nodes)
    assert text.op_histogram() == binary.op_histogram()
    assert text.get_all_collection_keys() == binary.get_all_collection_keys()
    assert text.saver_def == binary.saver_def
    for name in text.nodes:
        assert list(text.nodes[name].node_def.input) == list(binary.nodes[name].node_def.input), name


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_message_and_bytes_sources(name):
    meta = jaxmeta.read_meta_graph(FIXTURES[name])
    assert isinstance(meta, meta_graph_pb2.MetaGraphDef)
    from_file = views.jaxmeta_view(jaxmeta.import_meta_graph(FIXTURES[name], import_scope="net"))
    from_message = views.jaxmeta_view(jaxmeta.import_meta_graph(meta, import_scope="net"))
    from_bytes = views.jaxmeta_view(jaxmeta.import_meta_graph(meta.SerializeToString(), import_scope="net"))
    assert from_message == from_file
    assert from_bytes == from_file
    # The message passed in is not changed by the import (TF's clear_devices changes it; jaxmeta copies).
    jaxmeta.import_meta_graph(meta, clear_devices=True, import_scope="x")
    assert meta == jaxmeta.read_meta_graph(FIXTURES[name])


def test_pathlike_source():
    import pathlib

    graph = jaxmeta.import_meta_graph(pathlib.Path(FIXTURES["devices"]))
    assert graph.sources == [FIXTURES["devices"]]


# -- clear_devices, input_map, return_elements ----------------------------------------------------
@pytest.mark.parametrize("scope", [None, "net"])
def test_clear_devices_blanks_every_device(scope):
    kept = jaxmeta.import_meta_graph(FIXTURES["devices"], import_scope=scope)
    assert any(node.device for node in kept)
    graph = jaxmeta.import_meta_graph(FIXTURES["devices"], clear_devices=True, import_scope=scope)
    assert [node.name for node in graph if node.device] == []
    assert all(v.device == "" for v in graph.global_variables())


def test_legacy_device_strings_are_canonicalized_as_tf_does():
    graph = jaxmeta.import_meta_graph(FIXTURES["devices"])
    raw = {n.name: n.device for n in jaxmeta.read_meta_graph(FIXTURES["devices"]).graph_def.node}
    assert raw["z"] == "/gpu:0" and graph.nodes["z"].device == "/device:GPU:0"
    assert raw["out"] == "/cpu:0" and graph.nodes["out"].device == "/device:CPU:0"
    assert graph.nodes["w"].device == "/job:ps/task:0/device:CPU:0"
    assert graph.nodes["y"].device == "/job:worker/task:0/device:GPU:0"


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("/gpu:0", "/device:GPU:0"),
        ("/cpu:*", "/device:CPU:*"),
        ("/CPU:1", "/device:CPU:1"),
        ("gpu", "/device:GPU:*"),
        ("/task:1/job:worker", "/job:worker/task:1"),
        ("/job:ps/replica:0/task:0/device:CPU:0", "/job:ps/replica:0/task:0/device:CPU:0"),
        ("/device:XLA_CPU:0", "/device:XLA_CPU:0"),
        ("/weird:thing:here:x", "/weird:thing:here:x"),
    ],
)
def test_canonical_device(spec, canonical):
    from jaxmeta._import import canonical_device

    assert canonical_device(spec) == canonical


def _devices_pair(**kwargs):
    """`devices` imported under `a`, then again under `b` with its input `x` taken from `a/out`."""
    graph = jaxmeta.import_meta_graph(FIXTURES["devices"], clear_devices=True, import_scope="a")
    jaxmeta.import_meta_graph(FIXTURES["devices"], clear_devices=True, import_scope="b", graph=graph, **kwargs)
    return graph


@pytest.mark.parametrize("target", ["a/y:0", "tensor"])
def test_input_map_rewires_consumers(target):
    value = "a/y:0"
    graph = jaxmeta.import_meta_graph(FIXTURES["devices"], clear_devices=True, import_scope="a")
    mapped = graph.get_tensor_by_name(value) if target == "tensor" else value
    jaxmeta.import_meta_graph(
        FIXTURES["devices"], clear_devices=True, import_scope="b", graph=graph, input_map={"x": mapped}
    )
    assert [str(r) for r in graph.nodes["b/MatMul"].inputs] == ["a/y:0", "b/w/read:0"]
    assert "b/x" in graph.nodes  # the mapped placeholder is still imported, unused, as in TF
    assert graph.consumers("b/x") == []
    # Feeding a/x now drives b/out through a/y: b(x) = relu(a(x) @ w + b) with a's y of width 2.
    data = expected("devices")
    w = data["var:w"]
    variables = {f"{s}/{k}": data[f"var:{k}"] for s in "ab" for k in ("w", "b")}
    variables["b/w"] = np.ones((2, 2), np.float32)  # b's w must fit a/y (width 2)
    f = graph.function("b/y:0", feeds=["a/x:0"])
    x = data["feed:x:0"]
    y = np.asarray(f(variables, x))
    np.testing.assert_allclose(y, (x @ w + data["var:b"]) @ np.ones((2, 2)) + data["var:b"], rtol=1e-6)


def test_input_map_with_unknown_key_is_an_error():
    with pytest.raises(GraphError, match="input_map.*nope:0"):
        _devices_pair(input_map={"nope:0": "a/x:0"})


def test_input_map_target_must_exist():
    with pytest.raises(GraphError, match="missing/x:0|missing/x"):
        jaxmeta.import_meta_graph(FIXTURES["devices"], input_map={"x:0": "missing/x:0"})


def test_return_elements():
    graph, elements = jaxmeta.import_meta_graph(
        MNIST_META, import_scope="net", return_elements=["images:0", "softmax_linear/add:0", "GradientDescent"]
    )
    assert [e.name for e in elements] == ["net/images:0", "net/softmax_linear/add:0", "net/GradientDescent"]
    assert isinstance(elements[0], jaxmeta.Tensor) and isinstance(elements[2], jaxmeta.Node)
    assert elements[1] == graph.get_collection("logits")[0]
    with pytest.raises(GraphError):
        jaxmeta.import_meta_graph(MNIST_META, return_elements=["no_such_op"])


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="bogus"):
        jaxmeta.import_meta_graph(MNIST_META, bogus=1)


# -- several graphs in one ----------------------------------------------------------------------
def test_two_meta_graphs_side_by_side():
    graph = jaxmeta.import_meta_graph(MNIST_META, import_scope="mlp", clear_devices=True)
    same = jaxmeta.import_meta_graph(FIXTURES["control_flow"], import_scope="cf", graph=graph)
    assert same is graph
    mlp = tf_report("mnist_mlp")["unscoped"]
    cf = tf_report("control_flow")["unscoped"]
    assert len(graph) == mlp["node_count"] + cf["node_count"]
    assert {n for n in graph.nodes if n.startswith("mlp/")} == {"mlp/" + n for n in mlp["nodes"]}
    assert {n for n in graph.nodes if n.startswith("cf/")} == {"cf/" + n for n in cf["nodes"]}
    assert [v.name for v in graph.global_variables()] == (
        ["mlp/" + v["name"] for v in mlp["global_variables"]] + ["cf/" + v["name"] for v in cf["global_variables"]]
    )
    assert set(graph.get_all_collection_keys()) == set(mlp["collection_keys"]) | set(cf["collection_keys"])
    assert [c.context_name for c in graph.get_collection("while_context")] == ["cf/loop/while_context"]
    assert graph.saver_def.restore_op_name == "mlp/save/restore_all"  # the first import's SaverDef
    assert graph.sources == [MNIST_META, FIXTURES["control_flow"]]
    # The MLP runs inside the combined graph, with its scoped variables.
    data = expected("mnist_mlp")
    variables = {"mlp/" + k[len("var:"):]: v for k, v in data.items() if k.startswith("var:")}
    logits = graph.function("mlp/softmax_linear/add:0", feeds=["mlp/images:0"])(variables, data["feed:images:0"])
    np.testing.assert_allclose(np.asarray(logits), data["out:softmax_linear/add:0"], rtol=1e-5, atol=1e-5)


def test_unscoped_twice_is_a_duplicate_name_error():
    graph = jaxmeta.import_meta_graph(FIXTURES["devices"])
    with pytest.raises(GraphError, match=r"devices\.meta.*duplicate node name 'ones'.*import_scope"):
        jaxmeta.import_meta_graph(FIXTURES["devices"], graph=graph)


@pytest.mark.parametrize(
    "scopes, used",
    [
        (["net", "net", "net"], ["net", "net_1", "net_2"]),
        (["net", "Net"], ["net", "Net_1"]),  # TF compares names case-insensitively
        (["a/b", "a/b"], ["a/b", "a/b_1"]),
        (["net_1", "net"], ["net_1", "net"]),
        ([None, "x"], ["", "x_1"]),  # a node named `x` takes the scope `x`
        ([None, "save"], ["", "save"]),  # node names under `save/` do not
    ],
)
def test_scope_uniquification_follows_tf(scopes, used):
    graph = jaxmeta.Graph()
    for scope in scopes:
        jaxmeta.import_meta_graph(FIXTURES["devices"], import_scope=scope, graph=graph)
    assert [t.name for t in graph.get_collection("outputs")] == [
        f"{s}/out:0" if s else "out:0" for s in used
    ]


def test_scope_with_trailing_slash_is_used_as_given():
    graph = jaxmeta.import_meta_graph(FIXTURES["devices"], import_scope="net/")
    assert "net/out" in graph.nodes
    # TF would import a second time into the same names; jaxmeta refuses clearly.
    with pytest.raises(GraphError, match="duplicate node name 'net/ones'"):
        jaxmeta.import_meta_graph(FIXTURES["devices"], import_scope="net/", graph=graph)


# -- saver -----------------------------------------------------------------------------------------
def _saver_module():
    try:
        import jaxmeta._saver as module
    except ImportError:
        return None
    return module


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_saver_def_and_saver(name):
    graph = jaxmeta.import_meta_graph(FIXTURES[name], import_scope="net")
    want = tf_report(name)["scoped"]["saver_def"]
    assert views._message_dict(graph.saver_def) == want
    assert graph.saver_def.restore_op_name == "net/save/restore_all"
    assert graph.saver_def.filename_tensor_name == "net/save/Const:0"
    module = _saver_module()
    if module is not None:
        assert isinstance(graph.saver, module.Saver)


def _variable_free_meta_graph() -> meta_graph_pb2.MetaGraphDef:
    meta = jaxmeta.read_meta_graph(FIXTURES["devices"])
    keep = {"x"}
    nodes = [n for n in meta.graph_def.node if n.name in keep]
    del meta.graph_def.node[:]
    meta.graph_def.node.extend(nodes)
    meta.ClearField("saver_def")
    meta.collection_def.clear()
    return meta


def test_graph_without_variables_has_no_saver():
    graph = jaxmeta.import_meta_graph(_variable_free_meta_graph())
    assert graph.global_variables() == []
    assert graph.saver is None
    assert graph.saver_def is None


# -- errors ----------------------------------------------------------------------------------------
def _write(tmp_path, name: str, data: bytes) -> str:
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize(
    "kind",
    ["checkpoint_index", "checkpoint_data", "random_bytes", "empty", "truncated", "text_garbage", "npz"],
)
def test_not_a_meta_graph_is_one_clear_error(tmp_path, kind):
    with open(MNIST_META, "rb") as f:
        meta_bytes = f.read()
    if kind == "checkpoint_index":
        path = os.path.join(EXAMPLE, "mnist_mlp-100.index")
    elif kind == "checkpoint_data":
        path = os.path.join(GRAPHS, "devices.ckpt.data-00000-of-00001")
    elif kind == "npz":
        path = os.path.join(GRAPHS, "devices.expected.npz")
    else:
        data = {
            "random_bytes": np.random.default_rng(0).bytes(4096),
            "empty": b"",
            "truncated": meta_bytes[: len(meta_bytes) // 2],
            "text_garbage": b"graph_def { node { name: 'x' op: \n",
        }[kind]
        path = _write(str(tmp_path), f"{kind}.meta", data)
    with pytest.raises(GraphError) as info:
        jaxmeta.import_meta_graph(path)
    message = str(info.value)
    assert path in message
    assert "\n" not in message.strip()


def test_missing_file(tmp_path):
    path = os.path.join(str(tmp_path), "nope.meta")
    with pytest.raises(GraphError, match="nope.meta"):
        jaxmeta.import_meta_graph(path)


def test_dangling_input_names_file_and_node(tmp_path):
    meta = jaxmeta.read_meta_graph(FIXTURES["devices"])
    node = next(n for n in meta.graph_def.node if n.name == "y")
    node.input[0] = "MatMul_gone:0"
    path = _write(str(tmp_path), "dangling.meta", meta.SerializeToString())
    with pytest.raises(GraphError, match=r"dangling\.meta.*'y'.*MatMul_gone"):
        jaxmeta.import_meta_graph(path)


def test_dangling_control_input_names_file_and_node(tmp_path):
    meta = jaxmeta.read_meta_graph(FIXTURES["devices"])
    node = next(n for n in meta.graph_def.node if n.name == "out")
    node.input.append("^init_gone")
    path = _write(str(tmp_path), "dangling_ctl.meta", meta.SerializeToString())
    with pytest.raises(GraphError, match=r"dangling_ctl\.meta.*'out'.*init_gone"):
        jaxmeta.import_meta_graph(path)


def test_duplicate_names_name_file_and_node(tmp_path):
    meta = jaxmeta.read_meta_graph(FIXTURES["devices"])
    copy = meta.graph_def.node.add()
    copy.CopyFrom(next(n for n in meta.graph_def.node if n.name == "z"))
    path = _write(str(tmp_path), "dup.meta", meta.SerializeToString())
    with pytest.raises(GraphError, match=r"dup\.meta.*duplicate node name 'z'"):
        jaxmeta.import_meta_graph(path)


def test_collection_naming_a_missing_node(tmp_path):
    meta = jaxmeta.read_meta_graph(FIXTURES["devices"])
    meta.collection_def["outputs"].node_list.value.append("gone:0")
    path = _write(str(tmp_path), "badcol.meta", meta.SerializeToString())
    with pytest.raises(GraphError, match=r"badcol\.meta.*'outputs'.*gone:0"):
        jaxmeta.import_meta_graph(path)


def test_errors_are_jaxmeta_errors():
    assert issubclass(GraphError, jaxmeta.JaxmetaError)
    with pytest.raises(jaxmeta.JaxmetaError):
        jaxmeta.import_meta_graph(os.path.join(GRAPHS, "devices.ckpt.index"))
    with pytest.raises(GraphError):
        jaxmeta.import_meta_graph(12345)


# -- live TensorFlow --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    """Every fixture rebuilt with live TF into a temporary directory: {name: meta path}."""
    pytest.importorskip("tensorflow")
    import generate

    tf = generate.get_tf()
    directory = str(tmp_path_factory.mktemp("graphs"))
    return tf, {name: generate.generate(name, directory, tf) for name in generate.MODELS}


@pytest.mark.oracle
@pytest.mark.parametrize("scope_key", sorted(SCOPES))
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_oracle_view_matches_live_tensorflow(regenerated, name, scope_key):
    import generate

    tf, metas = regenerated
    scope = SCOPES[scope_key]
    graph, saver = generate.tf_import(tf, metas[name], scope)
    want = json.loads(json.dumps(views.tf_view(tf, graph, saver)))
    got = as_tf_reports(views.jaxmeta_view(jaxmeta.import_meta_graph(metas[name], import_scope=scope)), scope)
    assert_same_view(got, want, f"{name} ({scope_key}, live)")


@pytest.mark.oracle
def test_oracle_committed_fixtures_are_current(regenerated):
    """The committed tf.json reports equal a fresh run (generate.py was rerun after any change)."""
    tf, metas = regenerated
    for name, meta in metas.items():
        with open(stem(meta) + ".tf.json") as f:
            fresh = json.load(f)
        committed = tf_report(name)
        for key in ("unscoped", "scoped", "twice"):
            assert fresh[key] == committed[key], f"{name}: {key} differs; rerun tests/fixtures/generate.py"


@pytest.mark.oracle
def test_oracle_tf_message_is_accepted(regenerated):
    import generate

    tf, metas = regenerated
    tf_graph, saver = generate.tf_import(tf, metas["devices"])
    # With its SaverDef: TF's import builds a new Saver (13 more nodes) for a MetaGraphDef without one.
    message = tf.compat.v1.train.export_meta_graph(graph=tf_graph, saver_def=saver.saver_def, clear_devices=False)
    assert not isinstance(message, meta_graph_pb2.MetaGraphDef)
    graph = jaxmeta.import_meta_graph(message, import_scope="net")
    tf_graph, saver = generate.tf_import(tf, message, "net")
    assert views.jaxmeta_view(graph) == json.loads(json.dumps(views.tf_view(tf, tf_graph, saver)))


@pytest.mark.oracle
def test_oracle_input_map_and_scopes(regenerated):
    import generate

    tf, metas = regenerated
    meta = metas["devices"]
    tf_graph, _ = generate.tf_import(tf, meta, "a", clear_devices=True)
    with tf_graph.as_default():
        tf.compat.v1.train.import_meta_graph(
            meta, import_scope="b", clear_devices=True, input_map={"x:0": tf_graph.get_tensor_by_name("a/x:0")}
        )
    graph = _devices_pair(input_map={"x:0": "a/x:0"})
    tf_inputs = {op.name: list(op.node_def.input) for op in tf_graph.get_operations()}
    assert {n.name: list(n.node_def.input) for n in graph} == tf_inputs


WILD = os.path.join(os.path.dirname(HERE), "..", "shared", "wild")


def wild_metas() -> list[str]:
    if not os.path.isdir(WILD):
        return []
    out = []
    for case in sorted(os.listdir(WILD)):
        folder = os.path.join(WILD, case)
        if os.path.isdir(folder):
            out += [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".meta")]
    return out


@pytest.mark.oracle
@pytest.mark.parametrize("meta", wild_metas(), ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_oracle_wild_models(meta):
    pytest.importorskip("tensorflow")
    import generate

    tf = generate.get_tf()
    undated = not jaxmeta.read_meta_graph(meta).meta_info_def.tensorflow_version
    for scope in (None, "net"):
        tf_graph, saver = generate.tf_import(tf, meta, scope)
        want = json.loads(json.dumps(views.tf_view(tf, tf_graph, saver)))
        if undated:
            # Files without `tensorflow_version` predate VariableDef.trainable; TF then reads the unset
            # field (False) for every variable, while jaxmeta reports membership in
            # `trainable_variables`, which is what an optimizer in that graph trained.
            trainable = set(want["trainable_variables"])
            for v in want["global_variables"]:
                v["trainable"] = v["name"] in trainable
        got = as_tf_reports(views.jaxmeta_view(jaxmeta.import_meta_graph(meta, import_scope=scope)), scope)
        assert_same_view(got, want, f"{meta} (scope={scope})")


@pytest.mark.oracle
def test_oracle_side_by_side(regenerated):
    import generate

    tf, metas = regenerated
    tf_graph, _ = generate.tf_import(tf, metas["mnist_mlp"], "mlp")
    generate.tf_import(tf, metas["partitioned"], "part", graph=tf_graph)
    tf_graph, saver = generate.tf_import(tf, metas["control_flow"], "cf", graph=tf_graph)
    want = json.loads(json.dumps(views.tf_view(tf, tf_graph, saver)))
    graph = jaxmeta.import_meta_graph(metas["mnist_mlp"], import_scope="mlp")
    jaxmeta.import_meta_graph(metas["partitioned"], import_scope="part", graph=graph)
    jaxmeta.import_meta_graph(metas["control_flow"], import_scope="cf", graph=graph)
    got = as_tf_reports(views.jaxmeta_view(graph), "mlp")
    # TF returns the last import's Saver; jaxmeta's graph keeps the first SaverDef.
    assert want.pop("saver_def")["restore_op_name"] == "cf/save/restore_all"
    assert got.pop("saver_def")["restore_op_name"] == "mlp/save/restore_all"
    assert_same_view(got, want, "side by side (live)")
