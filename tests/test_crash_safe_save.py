"""Crash-safe saves: a process killed (SIGKILL) anywhere inside `saver.save` or `save_orbax` never
leaves a partial checkpoint where a reader would take it for a whole one.

Each trial starts a child that saves checkpoint after checkpoint (steps 1, 2, ...) into a directory
that already holds a complete step-0 checkpoint, and kills it after a random delay. The child slows
down every write, fsync and rename a little so that the kills land inside saves, at every stage
(data file, index, .meta, state file, max_to_keep deletions). Afterwards:

- `latest_checkpoint` names a checkpoint that restores bit-exactly to the values of its step;
- every checkpoint the state file lists, and every `.index` in the directory, restores bit-exactly;
- for Orbax, every checkpoint directory that has its final name restores bit-exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import jaxmeta

ROOT = Path(__file__).resolve().parents[1]
META = ROOT / "tests" / "fixtures" / "checkpoints" / "v2_tf1" / "model.ckpt-7.meta"
TRIALS = 20
ORBAX_TRIALS = 8
BATCH = 10

CHILD = textwrap.dedent(
    """
    import os, sys, time
    mode, folder, meta = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import numpy as np
    import jaxmeta
    from jaxmeta.checkpoint import _writer
    from crash_values import values_for

    # Widen every window a kill can land in: data writes, fsyncs, renames, deletions.
    def slow(f, pause=0.003):
        def wrapped(*args, **kwargs):
            time.sleep(pause)
            return f(*args, **kwargs)
        return wrapped
    os.replace = slow(os.replace)
    os.fsync = slow(os.fsync)
    os.remove = slow(os.remove)
    _writer._DataFile.append = slow(_writer._DataFile.append, 0.001)

    graph = jaxmeta.import_meta_graph(meta)
    if mode == "orbax":
        import orbax.checkpoint  # noqa: F401  (imported before "ready": the kill should hit saves)
    print("ready", flush=True)
    step = 1
    while True:
        variables = values_for(graph, step)
        if mode == "saver":
            graph.saver.save(variables, os.path.join(folder, "model.ckpt"), global_step=step)
        else:
            jaxmeta.save_orbax(os.path.join(folder, f"step_{step}"), variables, extra={"step": np.int32(step)})
        print("saved", step, flush=True)
        step += 1
    """
)

VALUES = textwrap.dedent(
    '''
    """Deterministic variable values for a step (shared by the crash test and its child)."""
    import numpy as np


    def values_for(graph, step):
        out = {}
        for i, var in enumerate(graph.saver.variable_names()):
            node = graph.nodes[var]
            shape = tuple(node.attr_shape("shape"))
            dtype = node.attr_dtype("dtype")
            n = int(np.prod(shape))
            if dtype == object:
                flat = np.array([f"{var}-{step}-{j}".encode() for j in range(n)], dtype=object)
            else:
                flat = (np.arange(n) * (i + 1) + step).astype(np.int32 if dtype.kind in "iu" else np.float32)
            out[var] = flat.reshape(shape)
        return out
    '''
)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash")
    (folder / "child.py").write_text(CHILD)
    (folder / "crash_values.py").write_text(VALUES)
    sys.path.insert(0, str(folder))
    try:
        import crash_values

        yield folder, crash_values.values_for
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("crash_values", None)


@pytest.fixture(scope="module")
def graph():
    return jaxmeta.import_meta_graph(str(META))


def assert_exact(restored, expected, where):
    assert set(restored) == set(expected), where
    for name, want in expected.items():
        got = np.asarray(restored[name])
        if want.dtype == object:
            assert got.tolist() == want.tolist(), (where, name)
        else:
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (where, name)


def run_trials(scripts, mode, folders, rng):
    """Starts one child per folder (BATCH at a time), kills each after a random delay; returns the
    number of saves each completed before the kill."""
    script = scripts[0] / "child.py"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = []
    for start in range(0, len(folders), BATCH):
        children = [
            subprocess.Popen(
                [sys.executable, str(script), mode, str(folder), str(META)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                text=True,
            )
            for folder in folders[start : start + BATCH]
        ]
        try:
            for child in children:
                assert child.stdout.readline().strip() == "ready"
            for child in children:
                time.sleep(rng.uniform(0.0, 0.6 if mode == "saver" else 1.5))
                child.send_signal(signal.SIGKILL)
            for child in children:
                child.wait(timeout=60)
                completed.append(sum(1 for line in child.stdout if line.startswith("saved")))
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.wait()
    return completed


def test_saver_killed_mid_save_keeps_previous_checkpoint(tmp_path, scripts, graph):
    values_for = scripts[1]
    rng = random.Random(1234)
    folders = []
    for i in range(TRIALS):
        folder = tmp_path / f"trial{i}"
        jaxmeta.Saver(graph).save(values_for(graph, 0), str(folder / "model.ckpt"), global_step=0)
        folders.append(folder)
    completed = run_trials(scripts, "saver", folders, rng)
    print("saves completed per trial before the kill:", completed)
    assert sum(completed) > 0, "no child finished a save: the kills came too early to test anything"
    for folder, done in zip(folders, completed):
        latest = jaxmeta.latest_checkpoint(str(folder))
        step = int(latest.rsplit("-", 1)[1])
        assert step >= done, (folder, step, done)  # every save reported done is visible
        assert_exact(graph.saver.restore(latest), values_for(graph, step), latest)
        listed = jaxmeta.get_checkpoint_state(str(folder)).all_model_checkpoint_paths
        indexes = sorted(str(p)[: -len(".index")] for p in folder.glob("*.index"))
        for prefix in dict.fromkeys([*listed, *indexes]):
            if os.path.exists(prefix + ".index"):
                step = int(prefix.rsplit("-", 1)[1])
                assert_exact(graph.saver.restore(prefix), values_for(graph, step), prefix)


def test_orbax_killed_mid_save_keeps_previous_checkpoint(tmp_path, scripts, graph):
    pytest.importorskip("orbax.checkpoint")
    values_for = scripts[1]
    rng = random.Random(99)
    folders = []
    for i in range(ORBAX_TRIALS):
        folder = tmp_path / f"trial{i}"
        jaxmeta.save_orbax(str(folder / "step_0"), values_for(graph, 0), extra={"step": np.int32(0)})
        folders.append(folder)
    completed = run_trials(scripts, "orbax", folders, rng)
    print("orbax saves completed per trial before the kill:", completed)
    for folder, done in zip(folders, completed):
        final = sorted(p for p in folder.iterdir() if p.name.startswith("step_") and p.name[5:].isdigit())
        steps = sorted(int(p.name[5:]) for p in final)
        assert steps[0] == 0 and len(steps) >= done + 1, (folder, steps, done)
        for path in final:
            step = int(path.name[5:])
            variables, extra = jaxmeta.restore_orbax(str(path))
            assert_exact(variables, values_for(graph, step), str(path))
            assert int(extra["step"]) == step
