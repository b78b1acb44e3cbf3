"""Conformance on real-world checkpoints in ../shared/wild (skipped when the folder is absent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxmeta
from jaxmeta._saver import Saver
from jaxmeta.checkpoint import CheckpointReader

from ._common import WILD, assert_same, tf_tensor

CASES = sorted(p.parent for p in WILD.glob("*/case.json")) if WILD.is_dir() else []
pytestmark = pytest.mark.skipif(not CASES, reason="../shared/wild is not here")


def _case(folder):
    return json.loads((folder / "case.json").read_text())


@pytest.mark.parametrize("folder", CASES, ids=[c.name for c in CASES])
def test_reads_every_tensor(folder):
    case = _case(folder)
    reader = CheckpointReader(str(folder / case["prefix"]))
    values = reader.get_tensors([name for name, _ in reader.list_variables()])
    assert values
    try:
        import tensorflow as tf
    except ImportError:
        return
    theirs = tf.train.load_checkpoint(str(folder / case["prefix"]))
    assert reader.list_variables() == tf.train.list_variables(str(folder / case["prefix"]))
    for name, value in values.items():
        assert_same(value, tf_tensor(theirs, name))


@pytest.mark.parametrize("folder", CASES, ids=[c.name for c in CASES])
def test_saver_restores(folder):
    case = _case(folder)
    graph = jaxmeta.import_meta_graph(str(folder / case["meta"]))
    variables = Saver(graph).restore(str(folder / case["prefix"]))
    missing = {v.op_name for v in graph.global_variables()} - set(variables)
    assert missing == set(case.get("missing_in_checkpoint", []))
    reader = CheckpointReader(str(folder / case["prefix"]))
    for spec in Saver(graph).restore_specs:
        got = np.asarray(variables[spec.variable])
        np.testing.assert_array_equal(got, reader.get_tensor(spec.key).astype(got.dtype))


@pytest.mark.parametrize("folder", CASES, ids=[c.name for c in CASES])
def test_state_file(folder):
    case = _case(folder)
    assert jaxmeta.checkpoint.latest_checkpoint(str(folder)) == str(folder / case["prefix"])
