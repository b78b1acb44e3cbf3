"""`jaxmeta.summary`: summaries of a committed TF1 graph, the `Summary` pytree, event files."""

from __future__ import annotations

import os
import struct

import jax
import numpy as np
import pytest
from oracle import assert_same_summary

import jaxmeta
from jaxmeta.checkpoint import _crc32c
from jaxmeta.proto import event_pb2, summary_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
GRAPHS = os.path.join(HERE, "fixtures", "graphs")
MERGED = "Merge/MergeSummary:0"
TAGS = ["loss_1", "weights", "note"]  # TF names the scalar's scope (its tag) past the node "loss"


@pytest.fixture(scope="module")
def fixture():
    graph = jaxmeta.import_meta_graph(os.path.join(GRAPHS, "summaries.meta"))
    variables = graph.saver.restore(os.path.join(GRAPHS, "summaries.ckpt"))
    with np.load(os.path.join(GRAPHS, "summaries.expected.npz")) as data:
        expected = dict(data)
    return graph, variables, expected


def test_merge_all_matches_tensorflow_bytes(fixture):
    graph, variables, expected = fixture
    x = expected["feed:x:0"]
    want = expected[f"out:{MERGED}"].tobytes()
    with jaxmeta.Session(graph, variables) as sess:
        merged, loss = sess.run([MERGED, "loss:0"], {"x:0": x})
        # Summaries leave a jitted function as pytrees: the signature is compiled, not run op by op.
        ((_, fn, _),) = sess._cache.values()
        assert hasattr(fn, "lower")
    assert_same_summary(merged, want)
    np.testing.assert_allclose(loss, expected["out:loss:0"], rtol=1e-6)
    summary = jax.jit(graph.function(MERGED, feeds=["x:0"]))(variables, x)
    assert isinstance(summary, jaxmeta.summary.Summary)
    assert summary.tags == TAGS
    assert_same_summary(bytes(summary), want)
    assert "histogram 'weights'" in repr(summary)


def test_summaries_collection_and_host_merge(fixture):
    graph, variables, expected = fixture
    x = expected["feed:x:0"]
    parts = graph.get_collection("summaries")
    assert len(parts) == 3
    f = graph.function(parts, feeds=["x:0"])
    merged = jaxmeta.summary.merge(f(variables, x))
    assert_same_summary(bytes(merged), expected[f"out:{MERGED}"].tobytes())
    with jaxmeta.Session(graph, variables) as sess:
        as_bytes = sess.run(parts, {"x:0": x})
    assert bytes(jaxmeta.summary.merge(as_bytes)) == bytes(merged)
    with pytest.raises(jaxmeta.GraphError, match="duplicate tag 'loss_1'"):
        jaxmeta.summary.merge([merged, as_bytes[0]])
    with pytest.raises(jaxmeta.GraphError, match="could not parse"):
        jaxmeta.summary.merge([b"\xff\xff"])


def test_summary_is_a_pytree(fixture):
    graph, variables, expected = fixture
    summary = graph.function(MERGED, feeds=["x:0"])(variables, expected["feed:x:0"])
    leaves, treedef = jax.tree_util.tree_flatten(summary)
    assert len(leaves) == 2  # the loss and the weights; the text was a constant, serialized at once
    again = jax.tree_util.tree_unflatten(treedef, [np.asarray(v) for v in leaves])
    assert bytes(again) == bytes(summary)


def read_records(path):
    """The records of a TFRecord file, checking both masked CRCs of each."""
    out = []
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        assert struct.unpack_from("<I", data, pos + 8)[0] == _crc32c.mask(_crc32c.extend(0, data[pos:pos + 8]))
        record = data[pos + 12:pos + 12 + length]
        assert struct.unpack_from("<I", data, pos + 12 + length)[0] == _crc32c.mask(_crc32c.extend(0, record))
        out.append(event_pb2.Event.FromString(record))
        pos += 16 + length
    return out


def write_log(graph, variables, x, logdir):
    with jaxmeta.Session(graph, variables) as sess, jaxmeta.summary.FileWriter(logdir, graph=graph) as writer:
        for step in range(3):
            writer.add_summary(sess.run(MERGED, {"x:0": x * (step + 1)}), step)
        writer.add_summary(jaxmeta.summary.merge([]), 3)
    (name,) = os.listdir(logdir)
    assert name.startswith("events.out.tfevents.")
    return os.path.join(logdir, name)


def test_file_writer_writes_tfrecords(fixture, tmp_path):
    graph, variables, expected = fixture
    path = write_log(graph, variables, expected["feed:x:0"], tmp_path / "logs")
    events = read_records(path)
    assert events[0].file_version == "brain.Event:2"
    assert events[1].HasField("graph_def")
    steps = [(e.step, [v.tag for v in e.summary.value]) for e in events[2:]]
    assert steps == [(0, TAGS), (1, TAGS), (2, TAGS), (3, [])]
    assert_same_summary(events[2].summary.SerializeToString(), expected[f"out:{MERGED}"].tobytes())
    writer = jaxmeta.summary.FileWriter(tmp_path / "closed")
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.add_summary(b"", 0)


@pytest.mark.oracle
def test_tensorboard_reads_the_event_file(fixture, tmp_path):
    tf = pytest.importorskip("tensorflow")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    graph, variables, expected = fixture
    x = expected["feed:x:0"]
    path = write_log(graph, variables, x, tmp_path / "logs")
    events = list(tf.compat.v1.train.summary_iterator(path))
    assert [e.step for e in events if e.HasField("summary")] == [0, 1, 2, 3]
    acc = accumulator.EventAccumulator(str(tmp_path / "logs"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    losses = [e.value for e in acc.Scalars("loss_1")]
    with jaxmeta.Session(graph, variables) as sess:
        want = [sess.run("loss:0", {"x:0": x * (k + 1)}) for k in range(3)]
    np.testing.assert_allclose(losses, want, rtol=1e-6)
    assert [h.step for h in acc.Histograms("weights")] == [0, 1, 2]
    assert acc.Graph() is not None
    proto = summary_pb2.Summary.FromString(expected[f"out:{MERGED}"].tobytes())
    assert proto.value[2].tensor.string_val == [b"trained by TF1"]
