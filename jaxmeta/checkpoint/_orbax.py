"""Orbax checkpoints of a variables dict (and any optimizer state beside it).

The layout is an Orbax composite checkpoint with two items: `state`, a PyTree
`{"variables": {op name: array}, "extra": <any pytree>}`, and `strings`, a JSON item holding string
variables (Orbax stores arrays, not bytes), base64-encoded with their shapes.
"""

from __future__ import annotations

import base64
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxmeta._errors import CheckpointError


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def save_orbax(path: str | os.PathLike, variables: Mapping[str, Any], extra: Any = None, *, force: bool = False) -> str:
    """Saves `variables` (and an optional pytree `extra`, e.g. optax state) as an Orbax checkpoint.

    Args:
        path: the checkpoint directory (must not exist unless `force`).
        variables: `{variable op name: array}`; string variables (object arrays) are kept too.
        extra: any pytree of arrays saved beside the variables.
        force: replace an existing directory. The new checkpoint is written beside it and swapped
            in by renames once complete, so an interrupted save leaves the previous one whole.

    Returns:
        The absolute path written.
    """
    ocp = _ocp()
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not force:
        raise CheckpointError(f"{path} already exists; pass force=True to overwrite it")
    numeric, strings = {}, {}
    for name, value in variables.items():
        arr = value if not isinstance(value, np.ndarray) or value.dtype != object else None
        if arr is None:
            flat = [v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1)]
            strings[name] = {"shape": list(value.shape), "values": [base64.b64encode(v).decode() for v in flat]}
        else:
            numeric[name] = value
    state = {"variables": numeric}
    if extra is not None:
        state["extra"] = extra
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), strings=ocp.args.JsonSave(strings))
    if not os.path.exists(path):
        checkpointer.save(path, args=args)
        return path
    parent, base = os.path.split(path)
    staged, old = (os.path.join(parent, f".{base}.{kind}-{uuid.uuid4().hex[:8]}") for kind in ("saving", "replaced"))
    try:
        checkpointer.save(staged, args=args)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    os.rename(path, old)  # from here to the next rename the previous checkpoint is at `old`, whole
    os.rename(staged, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def restore_orbax(path: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """Restores what `save_orbax` wrote.

    Returns:
        `(variables, extra)`: the variables dict (JAX arrays; NumPy object arrays for strings) and
        the extra pytree (None when none was saved).

    Raises:
        CheckpointError: when `path` is not such a checkpoint.
    """
    from jaxmeta._saver import _to_device

    ocp = _ocp()
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(os.path.join(path, "state")):
        raise CheckpointError(f"{path} is not an Orbax checkpoint written by jaxmeta (no 'state' item)")
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    items = {"state": ocp.args.PyTreeRestore()}
    if os.path.isdir(os.path.join(path, "strings")):
        items["strings"] = ocp.args.JsonRestore()
    restored = checkpointer.restore(path, args=ocp.args.Composite(**items))
    state = restored["state"]
    variables = {name: _to_device(np.asarray(value), name) for name, value in state.get("variables", {}).items()}
    for name, item in (restored.get("strings") or {}).items():
        flat = np.empty(len(item["values"]), dtype=object)
        flat[:] = [base64.b64decode(v) for v in item["values"]]
        variables[name] = flat.reshape(item["shape"])
    return variables, state.get("extra")
