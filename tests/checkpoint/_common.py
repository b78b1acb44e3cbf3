"""Shared paths and helpers of the checkpoint tests (fixtures come from generate_checkpoints.py)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"
WILD = (Path(__file__).resolve().parents[2] / ".." / "shared" / "wild").resolve()

_spec = importlib.util.spec_from_file_location(
    "generate_checkpoints", Path(__file__).resolve().parents[1] / "fixtures" / "generate_checkpoints.py"
)
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """A writable copy of fixture folder `name`."""
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def assert_same(a, b) -> None:
    """Equal dtype, shape and bytes (object arrays of bytes compared element-wise)."""
    a, b = np.asarray(a), np.asarray(b)
    if b.dtype.kind == "S":
        b = b.astype(object)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.dtype == object:
        assert a.tolist() == b.tolist()
    else:
        assert a.tobytes() == b.tobytes()


def tf_tensor(reader, name):
    """`reader.get_tensor` of TF, scalars of strings as 0-d object arrays."""
    value = np.asarray(reader.get_tensor(name))
    return value.astype(object) if value.dtype.kind == "S" else value
