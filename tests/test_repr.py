"""Notebook views (`jaxmeta/_repr.py`): one-line reprs and escaped HTML tables."""

from __future__ import annotations

import html.parser
import os

import jax
import numpy as np

import jaxmeta
from jaxmeta.proto import meta_graph_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = os.path.join(ROOT, "examples", "model", "mnist_mlp-100.meta")
CKPT = os.path.join(ROOT, "examples", "model", "mnist_mlp-100")
DEVICES_META = os.path.join(ROOT, "tests", "fixtures", "graphs", "devices.meta")


class _Checker(html.parser.HTMLParser):
    """Collects tags and text; a `<script>` tag or a stray attribute from the graph means bad escaping."""

    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> _Checker:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    return checker


def test_graph_repr_and_html():
    graph = jaxmeta.import_meta_graph(META)
    line = repr(graph)
    assert "\n" not in line and line.startswith("<jaxmeta.Graph") and "7 variables" in line
    page = graph._repr_html_()
    parsed = parse(page)
    assert "script" not in parsed.tags and "table" in parsed.tags
    text = " ".join(parsed.text)
    for expected in (
        "VariableV2",
        "hidden1/weights:0",
        "train_op",
        "hparams",
        "(784, 32)",
        "float32",
        "Collections",
    ):
        assert expected in text, expected
    assert "bytes" in text and "tensor" in text and "int" in text  # collection kinds
    op_rows = page.split("Ops (")[1].split("</table>")[0].count("<tr>") - 1
    assert op_rows <= 11  # top 10 op types and a "… more" row
    assert "no" in text  # global_step is not trainable


def test_graph_html_placement():
    graph = jaxmeta.import_meta_graph(DEVICES_META)
    text = " ".join(parse(graph._repr_html_()).text)
    assert "Placement" in text and "/job:ps/task:0/device:CPU:0" in text


def _hostile_meta() -> meta_graph_pb2.MetaGraphDef:
    meta = meta_graph_pb2.MetaGraphDef()
    name = "<script>alert('x')</script>"
    x = meta.graph_def.node.add(name=name, op="Placeholder", device="/job:<b>&")
    x.attr["dtype"].type = 1
    y = meta.graph_def.node.add(name="y\"'&<", op="Identity", input=[name])
    y.attr["T"].type = 1
    meta.collection_def["<img src=x onerror=alert(1)>"].node_list.value.append(name + ":0")
    return meta


def test_html_escapes_graph_strings():
    graph = jaxmeta.import_meta_graph(_hostile_meta())
    for page in (
        graph._repr_html_(),
        graph.get_tensor_by_name("y\"'&<:0")._repr_html_(),
        graph.get_operation_by_name("<script>alert('x')</script>")._repr_html_(),
    ):
        parsed = parse(page)
        assert "script" not in parsed.tags and "img" not in parsed.tags
        assert "<script>" not in page and "<img" not in page and "/job:<b>" not in page
    # Shown as text:
    assert "<img src=x onerror=alert(1)>" in " ".join(parse(graph._repr_html_()).text)
    node = graph.get_operation_by_name("<script>alert('x')</script>")
    assert "<script>alert('x')</script>" in " ".join(parse(node._repr_html_()).text)


def test_tensor_and_node_views():
    graph = jaxmeta.import_meta_graph(META)
    tensor = graph.get_tensor_by_name("images:0")
    assert repr(tensor) == "<Tensor 'images:0' shape=(?, 784) dtype=float32>"
    text = " ".join(parse(tensor._repr_html_()).text)
    assert "Placeholder" in text and "(?, 784)" in text and "hidden1/MatMul" in text
    node = graph.get_operation_by_name("hidden1/MatMul")
    assert repr(node) == "<Node 'hidden1/MatMul' type=MatMul>"
    text = " ".join(parse(node._repr_html_()).text)
    assert "images:0" in text and "transpose_a" in text
    placed = jaxmeta.import_meta_graph(DEVICES_META).get_operation_by_name("w")
    assert "device='/job:ps/task:0/device:CPU:0'" in repr(placed)


def test_session_views():
    graph = jaxmeta.import_meta_graph(META)
    sess = jaxmeta.Session(graph, graph.saver.restore(CKPT))
    sess.run("softmax_linear/add:0", {"images:0": np.zeros((2, 784), np.float32)})
    line = repr(sess)
    assert line == f"<jaxmeta.Session 7 variables, 1 compiled signatures, graph of {len(graph)} nodes>"
    text = " ".join(parse(sess._repr_html_()).text)
    assert "hidden1/weights" in text and "(784, 32)" in text and str(jax.devices()[0]) in text
    sess.close()
    assert "(closed)" in repr(sess)
