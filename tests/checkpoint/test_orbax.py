"""Orbax save/restore of variables (+ optimizer state) and `convert` between TF and Orbax."""

from __future__ import annotations

import io

import numpy as np
import pytest

from jaxmeta import CheckpointError
from jaxmeta.checkpoint import CheckpointReader
from jaxmeta.checkpoint._convert import Progress, convert
from jaxmeta.checkpoint._orbax import restore_orbax, save_orbax

from ._common import FIXTURES, assert_same

TF1 = FIXTURES / "v2_tf1"


def test_roundtrip_with_extra(tmp_path):
    variables = {"dense/kernel": np.arange(12, dtype=np.float32).reshape(3, 4), "step": np.int32(3),
                 "vocab": np.array([b"a", b"\xff"], dtype=object)}
    extra = {"adam": {"mu": [np.zeros(4, np.float32)], "count": np.int32(2)}}
    save_orbax(tmp_path / "o", variables, extra)
    got, got_extra = restore_orbax(tmp_path / "o")
    assert_same(got["dense/kernel"], variables["dense/kernel"])
    assert got["vocab"].tolist() == [b"a", b"\xff"]
    assert int(got["step"]) == 3
    np.testing.assert_array_equal(got_extra["adam"]["mu"][0], np.zeros(4))
    with pytest.raises(CheckpointError, match="already exists"):
        save_orbax(tmp_path / "o", variables)


def test_force_replaces_and_an_interrupted_replacement_keeps_the_previous(tmp_path, monkeypatch):
    """`force=True` swaps a complete new checkpoint in; a save that fails midway leaves the
    previous checkpoint whole and no staging directory behind."""
    import orbax.checkpoint as ocp

    path = tmp_path / "o"
    save_orbax(path, {"w": np.zeros(3, np.float32)})
    save_orbax(path, {"w": np.ones(3, np.float32)}, force=True)
    assert_same(restore_orbax(path)[0]["w"], np.ones(3, np.float32))

    def interrupted(self, directory, *args, **kwargs):
        import pathlib

        pathlib.Path(directory).mkdir()
        (pathlib.Path(directory) / "partial").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(ocp.Checkpointer, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_orbax(path, {"w": np.full(3, 2, np.float32)}, force=True)
    monkeypatch.undo()
    assert_same(restore_orbax(path)[0]["w"], np.ones(3, np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_not_orbax(tmp_path):
    with pytest.raises(CheckpointError, match="not an Orbax checkpoint"):
        restore_orbax(tmp_path)


def test_convert_both_ways(tmp_path):
    meta = str(TF1 / "model.ckpt-7.meta")
    out = convert(meta, str(TF1 / "model.ckpt-7"), to_orbax=str(tmp_path / "orbax"))
    variables, _ = restore_orbax(out)
    assert "emb/part_1" in variables
    prefix = convert(meta, out, to_tf=str(tmp_path / "tf" / "model.ckpt"))
    ours, theirs = CheckpointReader(prefix), CheckpointReader(str(TF1 / "model.ckpt-7"))
    for name in ("dense/kernel", "emb", "vocab", "global_step", "counts"):
        assert_same(ours.get_tensor(name), theirs.get_tensor(name))
    with pytest.raises(ValueError, match="exactly one"):
        convert(meta, out)


def test_progress_bar_text():
    stream = io.StringIO()
    bar = Progress(100, "reading", stream=stream, min_bytes=0)
    bar("a", 50)
    bar("b", 50)
    bar.close()
    assert "100.0%" in stream.getvalue() and stream.getvalue().endswith("\n")
