"""The graph model (`Graph`, `Node`, `Tensor`, `Variable`) against what TF reported for each fixture."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_import import FIXTURES, MNIST_META, SCOPES, tf_report

import jaxmeta
from jaxmeta import GraphError
from jaxmeta.proto import control_flow_pb2

CASES = [(name, key) for name in sorted(FIXTURES) for key in sorted(SCOPES)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{k}" for n, k in CASES])
def case(request):
    name, key = request.param
    graph = jaxmeta.import_meta_graph(FIXTURES[name], import_scope=SCOPES[key])
    return graph, tf_report(name)[key]


def test_operations(case):
    graph, tf = case
    assert len(graph) == tf["node_count"] == len(graph.get_operations())
    assert sorted(n.name for n in graph) == sorted(tf["nodes"])
    for name, want in tf["nodes"].items():
        node = graph.get_operation_by_name(name)
        assert name in graph
        assert node.type == want["op"]
        assert node.device == want["device"]
        assert node.colocation_groups == want["colocation"]
        assert node.control_inputs == [i[1:] for i in want["inputs"] if i.startswith("^")]
        data = [i for i in want["inputs"] if not i.startswith("^")]
        assert [str(r) for r in node.inputs] == [i if ":" in i else i + ":0" for i in data]
        assert node.num_outputs == len(want["outputs"])
        for group in node.colocation_groups:  # every `loc:@` names a node of this graph
            assert group.startswith("loc:@") and group[len("loc:@"):] in graph


def test_tensors(case):
    graph, tf = case
    for name, want in tf["nodes"].items():
        for i, dtype in enumerate(want["outputs"]):
            tensor = graph.get_tensor_by_name(f"{name}:{i}")
            assert tensor.dtype == dtype, tensor
            assert tensor.op is graph.nodes[name]
            assert tensor.value_index == i
            assert tensor.device == want["device"]
            assert tensor == graph.as_graph_element(f"{name}:{i}")
            assert hash(tensor) == hash(graph.get_tensor_by_name(f"{name}:{i}"))
        with pytest.raises(GraphError, match="outputs"):
            graph.get_tensor_by_name(f"{name}:{max(len(want['outputs']), 1)}")


def test_op_histogram(case):
    graph, tf = case
    histogram = graph.op_histogram()
    assert histogram == tf["op_histogram"]
    counts = list(histogram.values())
    assert counts == sorted(counts, reverse=True)  # most frequent first
    assert sum(counts) == len(graph)


def test_variables(case):
    graph, tf = case
    by_name = {v["name"]: v for v in tf["global_variables"]}
    assert [v.name for v in graph.global_variables()] == list(by_name)
    for var in graph.global_variables():
        want = by_name[var.name]
        assert var.op_name == want["op_name"]
        assert var.dtype == want["dtype"]
        assert list(var.shape) == want["shape"]
        assert var.trainable == want["trainable"]
        assert var.device == want["device"]
        assert var.initializer.name == want["initializer"]
        assert var.initializer.type == "Assign"
        assert var.snapshot.name == want["snapshot"]
        assert var.initial_value.name == want["initial_value"]
        assert not var.is_resource
        assert var.np_dtype == np.dtype(want["dtype"])
        assert var.op.type == "VariableV2"
        assert graph.as_graph_element(var) == graph.get_tensor_by_name(var.name)
    assert [v.name for v in graph.trainable_variables()] == tf["trainable_variables"]
    assert {n.name for n in graph.variable_nodes()} == {v["op_name"] for v in tf["global_variables"]}
    everything = {v["op_name"]: v["op_name"] for v in tf["global_variables"]}
    params, rest = graph.split_trainable(everything)
    assert set(params) == {v.op_name for v in graph.trainable_variables()}
    assert params.keys() | rest.keys() == everything.keys() and not params.keys() & rest.keys()


def test_get_collection_with_scope_filters_as_tf(case):
    graph, tf = case
    for key, items in tf["collections"].items():
        names = [next(iter(i.values())) for i in items if set(i) & {"tensor", "op", "variable"}]
        for scope in ("net/hidden1", "hidden1", "model/embedding", "net", "save"):
            got = [i.name for i in graph.get_collection(key, scope=scope)]
            assert got == [n for n in names if re.match(scope, n)], (key, scope)


def test_collection_refs_and_copies():
    graph = jaxmeta.import_meta_graph(MNIST_META)
    logits = graph.get_collection("logits")
    logits.append("junk")
    assert len(graph.get_collection("logits")) == 1
    graph.get_collection_ref("mine").append(b"x")
    graph.add_to_collection("mine", 3)
    assert graph.get_collection("mine") == [b"x", 3]
    assert "mine" in graph.get_all_collection_keys()
    assert graph.get_collection("absent") == []


def test_mnist_graph_api():
    graph = jaxmeta.import_meta_graph(MNIST_META, import_scope="net")
    images = graph.get_tensor_by_name("net/images:0")
    assert images.shape == (None, 784)
    assert images.dtype == "float32"
    assert graph.get_tensor_by_name("net/labels:0").dtype == "int32"
    assert graph.get_tensor_by_name("net/hidden1/weights:0").dtype == "float32_ref"
    step = next(v for v in graph.global_variables() if v.op_name == "net/global_step")
    assert not step.trainable and step.dtype == "int32" and step.shape == ()
    assert sorted(graph.consumers("net/images")) == ["net/gradients/hidden1/MatMul_grad/MatMul_1", "net/hidden1/MatMul"]
    matmul = graph.get_operation_by_name("net/hidden1/MatMul")
    assert matmul.attr_bool("transpose_a") is False
    assert matmul.attr_dtype("T") == np.float32
    assert matmul.get_attr("T") == "float32"
    weights = graph.get_operation_by_name("net/hidden1/weights")
    assert weights.attr_shape("shape") == (784, 32)
    assert weights.get_attr("shape") == (784, 32)
    assert weights.outputs[0].name == "net/hidden1/weights:0"
    assert "net/hidden1/weights" in repr(weights)
    assert "jaxmeta.Graph" in repr(graph)


def test_lookup_errors_are_clear():
    graph = jaxmeta.import_meta_graph(MNIST_META)
    with pytest.raises(GraphError, match="names an operation.*'images:0'"):
        graph.get_tensor_by_name("images")
    with pytest.raises(GraphError, match="no operation named 'imagse'.*did you mean 'images'"):
        graph.get_operation_by_name("imagse")
    with pytest.raises(GraphError, match="no operation named"):
        graph.get_tensor_by_name("nope:0")
    with pytest.raises(GraphError, match="control input"):
        jaxmeta.TensorRef.parse("^images")
    node = graph.get_operation_by_name("hidden1/MatMul")
    with pytest.raises(GraphError, match="'hidden1/MatMul'.*no attribute 'padding'"):
        node.attr_str("padding")
    with pytest.raises(GraphError, match="'transpose_a' is a b, expected i"):
        node.attr_int("transpose_a")
    with pytest.raises(GraphError):
        graph.as_graph_element(3.5)


@pytest.mark.parametrize("text, node, index", [("a", "a", 0), ("a:3", "a", 3), ("a/b:0", "a/b", 0), ("a:b", "a:b", 0)])
def test_tensor_ref_parse(text, node, index):
    ref = jaxmeta.TensorRef.parse(text)
    assert (ref.node, ref.index) == (node, index)


def test_partitioned_variables():
    graph = jaxmeta.import_meta_graph(FIXTURES["partitioned"], import_scope="net")
    parts = [v for v in graph.global_variables() if v.op_name.startswith("net/model/embedding/")]
    assert [v.save_slice_info.full_name for v in parts] == ["net/model/embedding"] * 3
    assert [list(v.save_slice_info.var_offset) for v in parts] == [[0, 0], [4, 0], [7, 0]]
    assert [list(v.save_slice_info.var_shape) for v in parts] == [[4, 4], [3, 4], [3, 4]]
    assert all(list(v.save_slice_info.full_shape) == [10, 4] for v in parts)
    assert sum(v.shape[0] for v in parts) == 10


def test_control_flow_contexts_are_scoped():
    graph = jaxmeta.import_meta_graph(FIXTURES["control_flow"], import_scope="net")
    (loop,) = graph.get_collection("while_context")
    assert isinstance(loop, control_flow_pb2.WhileContextDef)
    assert loop.context_name == "net/loop/while_context"
    assert all(name.startswith("net/") for name in [*loop.loop_enter_names, *loop.loop_exit_names])
    for name in [*loop.loop_enter_names, loop.pivot_name, *loop.values_def.values]:
        graph.get_tensor_by_name(name)
    enters = [n for n in graph if n.type == "Enter"]
    assert enters and {n.attr_str("frame_name") for n in enters} == {"net/loop/while_context"}
    conds = graph.get_collection("cond_context")
    assert [c.context_name for c in conds] == ["net/cond/cond_text", "net/cond/cond_text_1"]
    for c in conds:
        graph.get_tensor_by_name(c.pred_name)
        graph.get_tensor_by_name(c.pivot_name)


def test_devices_fixture():
    graph = jaxmeta.import_meta_graph(FIXTURES["devices"])
    devices = {}
    for node in graph:
        devices[node.device] = devices.get(node.device, 0) + 1
    assert set(devices) == {
        "",
        "/job:ps/task:0/device:CPU:0",
        "/job:worker/task:0/device:GPU:0",
        "/device:GPU:0",
        "/device:CPU:0",
    }
    assert [v.device for v in graph.global_variables()] == ["/job:ps/task:0/device:CPU:0"] * 2
