"""`benchmarks/run.py` runs end to end on the MLP with its smallest settings and writes a table;
`benchmarks/serving.py` with two small batches.

No timing is asserted: benchmarks report ratios, tests only check that the script works.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxmeta

pytestmark = pytest.mark.oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow builds the benchmark graphs")
def test_serving_writes_a_table(tmp_path):
    out = tmp_path / "serving.md"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "serving.py"), "--repeats", "2", "--batches", "1,3",
         "--train-batch", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]  # it also checks the answers against TF's
    rows = [line.strip("|").split("|") for line in out.read_text().splitlines() if line.startswith("| serving")
            or line.startswith("| training")]
    assert [int(row[1]) for row in rows] == [1, 3, 4, 4] and all(len(row) == 7 for row in rows), rows


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow builds the benchmark graphs")
def test_run_writes_a_table_for_the_mlp(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--models", "mlp", "--quick", "--repeats", "2",
         "--dir", str(tmp_path / "models"), "--out", str(out), "--timeout", "300"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "latest.md").read_text()
    assert "## mlp" in table
    assert "| metric | jaxmeta | TF1 Session | OpenVINO | jaxmeta/TF |" in table
    rows = [line for line in table.splitlines() if line.startswith("| latency, batch 1 (ms)")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1][0].isdigit() and cells[2][0].isdigit(), rows[0]  # jaxmeta and TF both measured
    tuned = [line for line in table.splitlines() if line.startswith("| train step, autotuned (ms)")]
    assert len(tuned) == 1 and tuned[0].split("|")[2].strip()[0].isdigit(), tuned
    frozen = [line for line in table.splitlines() if line.startswith("| latency, batch 1, frozen variables")]
    assert len(frozen) == 1 and all(c.strip()[0].isdigit() for c in frozen[0].split("|")[2:4]), frozen
    assert "XLA options chosen by `jaxmeta.autotune`: latency: " in table
    assert re.search(r"^- jaxmeta ran on: \w+ \(.+\); TF1 and OpenVINO on the CPU$", table, re.M), table[:800]
    peak = [line for line in table.splitlines() if line.startswith("| mlp | ") and line.count("|") == 7]
    assert len(peak) == 1 and "—" not in peak[0], peak  # both frameworks' work rates and products measured
    assert "error" not in table, table


def _run_module():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "benchmarks", "run.py"))
    run = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        spec.loader.exec_module(run)
    finally:
        sys.path.pop(0)
        del sys.modules[spec.name]
    return run


def test_fast_calls_are_timed_more_often_and_first_calls_once():
    run = _run_module()
    fast, slow = (lambda: None), (lambda: time.sleep(run.FILL_S / 4))
    assert len(run._timed_alternately([fast, fast], 5)[0]) == 5 * run.MAX_TURNS_FACTOR
    assert [len(t) for t in run._timed_alternately([slow], 5)] == [5]
    assert len(run._timed(fast, 1)) == 1


def test_rounds_pool_samples_and_keep_every_autotune_choice():
    run = _run_module()
    first = run.Result({"latency_ms": [1.0, 2.0]}, None, 3.0, {"latency": "no YNNPACK", "train": "XLA default"})
    second = run.Result({"latency_ms": [4.0], "restore_s": [0.5]}, "boom", 2.0,
                        {"latency": "XLA default", "train": "XLA default"})
    merged = run.merge([first, second])
    assert merged.samples == {"latency_ms": [1.0, 2.0, 4.0], "restore_s": [0.5]}
    assert merged.error == "boom" and merged.seconds == 5.0
    assert merged.info == {"latency": "no YNNPACK / XLA default", "train": "XLA default"}


def test_reuse_writes_a_missing_checkpoint_from_the_initializers(tmp_path):
    """A model carried as `.meta` + `spec.json` alone (to a machine without TensorFlow) gets its
    checkpoint from jaxmeta, in TF's format, and the spec its size."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import models
    finally:
        sys.path.pop(0)
    directory = tmp_path / "models" / "mlp"
    directory.mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "examples", "model", "mnist_mlp-100.meta"), directory / "model.ckpt.meta")
    spec = models.ModelSpec([models.Feed("images:0", [784])], "softmax_linear/add:0", [], "loss:0", "train",
                            large_batch=4, train_batch=2)
    models.save_spec(spec, str(directory))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--worker", "--framework",
                           "materialize", "--model", "mlp", "--dir", str(tmp_path / "models")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tensorflow" not in proc.stderr.lower()
    graph = jaxmeta.import_meta_graph(str(directory / "model.ckpt.meta"))
    variables = graph.saver.restore(str(directory / "model.ckpt"))
    assert set(variables) == {v.op_name for v in graph.global_variables()}
    assert models.load_spec(str(directory)).checkpoint_bytes == models.checkpoint_bytes(str(directory / "model.ckpt"))
    assert float(np.abs(np.asarray(variables["hidden1/weights"])).sum()) > 0  # the initializer's values
