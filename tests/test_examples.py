"""The README's main job and the import-and-extend example run end to end (few steps)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: pathlib.Path) -> str:
    pytest.importorskip("optax")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow" not in result.stderr.lower() or "Traceback" not in result.stderr
    return result.stdout


def test_continue_training(tmp_path):
    out = _run("continue_training.py", "--steps", "6", "--out", str(tmp_path / "out"), cwd=tmp_path)
    losses = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if line.startswith("train_op step")]
    assert losses[-1] < losses[0], out
    assert (tmp_path / "out" / "mnist_mlp-106.index").exists()
    assert (tmp_path / "out" / "checkpoint").exists()
    assert (tmp_path / "out" / "orbax").is_dir()
    # the README's command run again: it replaces its own output instead of failing on it
    again = _run("continue_training.py", "--steps", "2", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert "saved Orbax checkpoint" in again and (tmp_path / "out" / "mnist_mlp-102.index").exists()


def test_import_and_extend(tmp_path):
    out = _run("import_and_extend.py", "--steps", "5", "--fine-tune", cwd=tmp_path)
    assert "step 4: loss" in out
