"""Conformance runs on real TF1 models: `python tools/conformance.py ../shared/wild [--jit]`.

Each case folder holds a `.meta`, its checkpoint, `case.json` and `expect.npz` made by running the
model in TensorFlow (see ../shared/wild/README.md). For every case this imports the graph,
restores the checkpoint, compares every fetch with TF's output and, when the case has a `train`
entry, runs the training op K times and compares the listed variables.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import traceback
from typing import Any

import jax
import numpy as np

import jaxmeta


def load_case(folder: pathlib.Path) -> dict[str, Any]:
    case = json.loads((folder / "case.json").read_text())
    case["folder"] = folder
    case["expect"] = dict(np.load(folder / "expect.npz", allow_pickle=False))
    return case


def restore(graph: jaxmeta.Graph, case: dict[str, Any]) -> dict[str, jax.Array]:
    """Restores the checkpoint; variables the checkpoint lacks get their initializers."""
    prefix = str(case["folder"] / case["prefix"])
    partial = case.get("restore") == "partial"
    variables = graph.saver.restore(prefix, partial=partial)
    missing = case.get("missing_in_checkpoint", [])
    if missing:
        variables = {**graph.init_variables(names=missing), **variables}
    return variables


def tolerance(case: dict[str, Any]) -> float:
    return 1e-3 if len(case.get("fetches", [])) and "lstm" in case["folder"].name else 1e-4


def run_case(folder: pathlib.Path, *, jit: bool = True) -> dict[str, Any]:
    """Runs one case; returns a report with max relative errors per fetch/variable."""
    case = load_case(folder)
    expect = case["expect"]
    report: dict[str, Any] = {"case": folder.name, "fetches": {}, "train": {}}
    graph = jaxmeta.import_meta_graph(folder / case["meta"])
    variables = restore(graph, case)
    feed_names = list(case["feeds"])
    feed_values = [expect[key] for key in case["feeds"].values()]
    key = jax.random.key(0)

    predict = graph.function(case["fetches"], feeds=feed_names)
    predict = jax.jit(predict) if jit else predict
    outputs = predict(variables, *feed_values, key=key)
    for i, (name, value) in enumerate(zip(case["fetches"], outputs)):
        report["fetches"][name] = rel_error(value, expect[f"out{i}"])

    train = case.get("train")
    if train:
        step = graph.step([], feeds=feed_names, targets=[train["op"]])
        step = jax.jit(step, donate_argnums=0) if jit else step
        state = dict(variables)
        for _ in range(train["steps"]):
            _, state = step(state, *feed_values, key=key)
        for name in train["variables"]:
            report["train"][name] = rel_error(state[name], expect[f"var:{name}"])
    return report


def rel_error(got: Any, want: np.ndarray) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-6)
    return float(np.max(np.abs(got - want)) / scale) if want.size else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=pathlib.Path, help="a folder of case folders (e.g. ../shared/wild)")
    parser.add_argument("--no-jit", action="store_true")
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args(argv)
    failures = 0
    for folder in sorted(p for p in args.root.iterdir() if (p / "case.json").exists()):
        t0 = time.perf_counter()
        try:
            report = run_case(folder, jit=not args.no_jit)
        except Exception as e:  # report and go on to the next case
            failures += 1
            print(f"FAIL {folder.name}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)
            continue
        worst_fetch = max(report["fetches"].values(), default=0.0)
        worst_train = max(report["train"].values(), default=0.0)
        ok = worst_fetch <= args.tol and worst_train <= args.tol
        failures += not ok
        print(
            f"{'ok  ' if ok else 'FAIL'} {folder.name}: fetches max rel err {worst_fetch:.2e}, "
            f"{len(report['train'])} trained variables max rel err {worst_train:.2e} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
