"""The `checkpoint` state file: reading, resolving foreign paths safely, atomic writing."""

from __future__ import annotations

import os

import pytest

from jaxmeta import CheckpointError
from jaxmeta.checkpoint._state import get_checkpoint_state, latest_checkpoint, read_state, write_state

from ._common import FIXTURES, copy_fixture


def _state(folder, text):
    (folder / "checkpoint").write_text(text)


def test_fixture_state():
    folder = FIXTURES / "v2_tf1"
    assert latest_checkpoint(str(folder)) == str(folder / "model.ckpt-7")
    state = get_checkpoint_state(str(folder))
    assert list(state.all_model_checkpoint_paths) == [str(folder / "model.ckpt-7")]


def test_v1_patterns():
    folder = FIXTURES / "v1_sharded"
    assert latest_checkpoint(str(folder)) == str(folder / "model.ckpt-?????-of-00003")


def test_no_state_file(tmp_path):
    assert latest_checkpoint(str(tmp_path)) is None
    assert get_checkpoint_state(str(tmp_path)) is None


def test_absolute_path_from_another_machine(tmp_path):
    folder = copy_fixture("v2_tf1", tmp_path)
    _state(folder, 'model_checkpoint_path: "/home/someone/train/model.ckpt-7"\n'
                   'all_model_checkpoint_paths: "/home/someone/train/model.ckpt-7"\n')
    assert latest_checkpoint(str(folder)) == str(folder / "model.ckpt-7")
    assert list(get_checkpoint_state(str(folder)).all_model_checkpoint_paths) == [str(folder / "model.ckpt-7")]


def test_windows_path(tmp_path):
    folder = copy_fixture("v2_tf1", tmp_path)
    _state(folder, 'model_checkpoint_path: "C:\\\\Users\\\\me\\\\run\\\\model.ckpt-7"\n')
    assert latest_checkpoint(str(folder)) == str(folder / "model.ckpt-7")


def test_never_follows_a_path_outside(tmp_path):
    folder = copy_fixture("v2_tf1", tmp_path)
    other = copy_fixture("v2_sharded", tmp_path)  # a real checkpoint outside `folder`
    _state(folder, f'model_checkpoint_path: "{other / "model.ckpt"}"\n')
    with pytest.raises(CheckpointError, match="outside.*pass that prefix explicitly"):
        latest_checkpoint(str(folder))
    _state(folder, 'model_checkpoint_path: "../v2_sharded/model.ckpt"\n')
    with pytest.raises(CheckpointError, match="outside"):
        latest_checkpoint(str(folder))


def test_relative_path_inside(tmp_path):
    folder = copy_fixture("v2_tf1", tmp_path)
    os.makedirs(folder / "sub")
    for name in os.listdir(folder):
        if name.startswith("model.ckpt-7"):
            os.rename(folder / name, folder / "sub" / name)
    _state(folder, 'model_checkpoint_path: "sub/model.ckpt-7"\n')
    assert latest_checkpoint(str(folder)) == str(folder / "sub" / "model.ckpt-7")


def test_gone_checkpoint(tmp_path):
    folder = copy_fixture("v2_tf1", tmp_path)
    _state(folder, 'model_checkpoint_path: "model.ckpt-99"\n')
    with pytest.raises(CheckpointError, match="model.ckpt-99.*does not exist"):
        latest_checkpoint(str(folder))


def test_malformed(tmp_path):
    _state(tmp_path, "this is : not a state file {")
    with pytest.raises(CheckpointError, match="not a valid checkpoint state file"):
        latest_checkpoint(str(tmp_path))
    _state(tmp_path, "")
    with pytest.raises(CheckpointError, match="no model_checkpoint_path"):
        latest_checkpoint(str(tmp_path))


def test_write_is_relative_and_atomic(tmp_path):
    path = write_state(str(tmp_path), str(tmp_path / "m-2"), [str(tmp_path / "m-1"), str(tmp_path / "m-2")],
                       timestamps=[1.0, 2.0])
    assert os.listdir(tmp_path) == ["checkpoint"]
    state = read_state(str(tmp_path))
    assert state.model_checkpoint_path == "m-2"
    assert list(state.all_model_checkpoint_paths) == ["m-1", "m-2"]
    assert list(state.all_model_checkpoint_timestamps) == [1.0, 2.0]
    assert path == str(tmp_path / "checkpoint")


@pytest.mark.oracle
def test_tensorflow_reads_our_state_file(tmp_path):
    tf = pytest.importorskip("tensorflow")
    folder = copy_fixture("v2_tf1", tmp_path)
    write_state(str(folder), str(folder / "model.ckpt-7"), [str(folder / "model.ckpt-7")])
    assert tf.train.latest_checkpoint(str(folder)) == str(folder / "model.ckpt-7")
