"""jaxmeta never loads TensorFlow: not on import, not importing a graph, not running one."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "jaxmeta")

_SCRIPT = r"""
import sys

import numpy as np

import jaxmeta

assert "tensorflow" not in sys.modules, "import jaxmeta loaded tensorflow"
graph = jaxmeta.import_meta_graph({meta!r}, clear_devices=True, import_scope="net")
logits = graph.get_collection("logits")[0]
with np.load({npz!r}) as data:
    variables = {{"net/" + k[4:]: data[k] for k in data.files if k.startswith("var:")}}
    images = data["feed:images:0"]
    want = data["out:softmax_linear/add:0"]
f = graph.function(logits, feeds=["net/images:0"])
import jax

got = np.asarray(jax.jit(f)(variables, images))
np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
from jaxmeta import cli

cli.main(["inspect", {meta!r}, "--json"])
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith(("tensorflow.", "tf_keras", "tf_slim")))
assert not loaded, loaded
print("NO_TENSORFLOW_OK")
"""


def test_import_and_run_without_loading_tensorflow():
    meta = os.path.join(REPO, "examples", "model", "mnist_mlp-100.meta")
    npz = os.path.join(REPO, "examples", "model", "mnist_mlp-100.expected.npz")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(meta=meta, npz=npz)],
        capture_output=True, text=True, env=env, cwd=REPO, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NO_TENSORFLOW_OK" in done.stdout


def _python_files() -> list[str]:
    out = []
    for root, _, files in os.walk(PACKAGE):
        out += [os.path.join(root, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _tf_imports(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__", "importorskip"
        ):
            names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        else:
            continue
        found += [f"{path}:{node.lineno}: {n}" for n in names if n.split(".")[0] in ("tensorflow", "tf_keras", "tf_slim")]
    return found


def test_package_source_never_imports_tensorflow():
    files = _python_files()
    assert len(files) > 10
    offenders = [hit for path in files for hit in _tf_imports(path)]
    assert offenders == [], "jaxmeta must not import TensorFlow:\n" + "\n".join(offenders)


@pytest.mark.parametrize("snippet", ["import tensorflow as tf", "from tensorflow.core import x", "import tf_slim"])
def test_static_check_catches_imports(tmp_path, snippet):
    path = tmp_path / "bad.py"
    path.write_text(f"def f():\n    {snippet}\n")
    assert _tf_imports(str(path))
