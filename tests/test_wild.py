"""Conformance on real, published TF1 models (../shared/wild), when that folder is present."""

from __future__ import annotations

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WILD = ROOT.parent / "shared" / "wild"
sys.path.insert(0, str(ROOT / "tools"))

CASES = sorted(p.name for p in WILD.iterdir() if (p / "case.json").exists()) if WILD.is_dir() else []


@pytest.mark.skipif(not CASES, reason="../shared/wild is not present")
@pytest.mark.parametrize("name", CASES)
def test_wild_case_matches_tensorflow(name):
    import conformance

    report = conformance.run_case(WILD / name, jit=True)
    tol = 2e-3
    bad = {k: v for k, v in {**report["fetches"], **report["train"]}.items() if not v <= tol}
    assert not bad, f"{name}: relative errors above {tol}: {bad}"
