"""The `checkpoint` state file: a text-format CheckpointState naming the latest checkpoint.

TensorFlow writes absolute paths by default, so a directory copied from another machine names files
that are not there. jaxmeta resolves every path against the directory the state file is in, and
never lets a state file send it outside that directory: a path that points elsewhere is replaced by
the same file name inside the directory, and when no such checkpoint exists the error says so.
"""

from __future__ import annotations

import os
import re
import time

from google.protobuf import text_format

from jaxmeta._errors import CheckpointError
from jaxmeta._fileio import atomic_write
from jaxmeta.checkpoint import _bundle, _v1
from jaxmeta.proto import checkpoint_pb2

DEFAULT_FILENAME = "checkpoint"


def checkpoint_exists(prefix: str) -> bool:
    """Whether a V2 (`PREFIX.index`) or V1 (the file, or files matching it) checkpoint exists."""
    if os.path.isfile(_bundle.index_path(prefix)):
        return True
    return any(_v1.is_v1_table(p) for p in _v1.matching_files(prefix))


def _inside(path: str, directory: str) -> bool:
    real_dir = os.path.realpath(directory)
    real = os.path.realpath(path)
    return real == real_dir or real.startswith(real_dir.rstrip(os.sep) + os.sep)


def _foreign(path: str) -> bool:
    """A path in another OS's spelling (`C:\\...` or with backslashes) on this one."""
    return os.sep == "/" and ("\\" in path or re.match(r"^[A-Za-z]:", path) is not None)


def _resolve(path: str, directory: str) -> tuple[str, bool]:
    """(path inside `directory`, whether the state file's own spelling pointed there)."""
    if _foreign(path):
        return os.path.join(directory, re.split(r"[\\/]", path)[-1]), False
    candidate = os.path.normpath(path if os.path.isabs(path) else os.path.join(directory, path))
    if _inside(candidate, directory):
        return candidate, True
    return os.path.join(directory, os.path.basename(candidate)), False


def read_state(checkpoint_dir: str, latest_filename: str = DEFAULT_FILENAME) -> checkpoint_pb2.CheckpointState | None:
    """The state file as written, without resolving its paths (None when there is none)."""
    path = os.path.join(checkpoint_dir, latest_filename)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint state file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{path} is not a valid checkpoint state file (not UTF-8 text: {e.reason} at byte {e.start}); "
            "delete it or pass a checkpoint prefix explicitly"
        ) from None
    state = checkpoint_pb2.CheckpointState()
    try:
        text_format.Parse(text, state)
    except text_format.ParseError as e:
        raise CheckpointError(
            f"{path} is not a valid checkpoint state file ({e}); delete it or pass a checkpoint prefix "
            "explicitly"
        ) from None
    return state


def get_checkpoint_state(
    checkpoint_dir: str, latest_filename: str = DEFAULT_FILENAME
) -> checkpoint_pb2.CheckpointState | None:
    """Reads the state file in `checkpoint_dir`, as `tf.train.get_checkpoint_state`.

    Every path in the result lies inside `checkpoint_dir`: relative ones are joined to it, and
    absolute ones that point elsewhere (typically written on another machine) are replaced by the same
    file name inside it.

    Args:
        checkpoint_dir: the directory of the state file.
        latest_filename: the state file's name.

    Returns:
        The CheckpointState, or None when the directory has no state file.

    Raises:
        CheckpointError: when the state file is unreadable or malformed, or names no checkpoint.
    """
    state = read_state(checkpoint_dir, latest_filename)
    if state is None:
        return None
    if not state.model_checkpoint_path:
        raise CheckpointError(
            f"{os.path.join(checkpoint_dir, latest_filename)} names no model_checkpoint_path; pass a "
            "checkpoint prefix explicitly"
        )
    for path in [state.model_checkpoint_path, *state.all_model_checkpoint_paths]:
        if "\0" in path:
            raise CheckpointError(
                f"{os.path.join(checkpoint_dir, latest_filename)} names a path with a NUL byte ({path!r}); "
                "the state file is corrupt: delete it or pass a checkpoint prefix explicitly"
            )
    out = checkpoint_pb2.CheckpointState()
    out.CopyFrom(state)
    out.model_checkpoint_path = _resolve(state.model_checkpoint_path, checkpoint_dir)[0]
    del out.all_model_checkpoint_paths[:]
    out.all_model_checkpoint_paths.extend(_resolve(p, checkpoint_dir)[0] for p in state.all_model_checkpoint_paths)
    return out


def latest_checkpoint(checkpoint_dir: str, latest_filename: str = DEFAULT_FILENAME) -> str | None:
    """The prefix of the latest checkpoint in `checkpoint_dir`, as `tf.train.latest_checkpoint`.

    Args:
        checkpoint_dir: the directory holding the `checkpoint` state file and the checkpoints.
        latest_filename: the state file's name.

    Returns:
        The checkpoint prefix (inside `checkpoint_dir`), or None when there is no state file.

    Raises:
        CheckpointError: when the state file names a checkpoint that is not in `checkpoint_dir`; the
            message says what was looked for.
    """
    state = read_state(checkpoint_dir, latest_filename)
    if state is None:
        return None
    resolved = get_checkpoint_state(checkpoint_dir, latest_filename)
    written = state.model_checkpoint_path
    prefix = resolved.model_checkpoint_path
    if checkpoint_exists(prefix):
        return prefix
    _, pointed_inside = _resolve(written, checkpoint_dir)
    state_path = os.path.join(checkpoint_dir, latest_filename)
    if pointed_inside:
        raise CheckpointError(
            f"{state_path} names checkpoint {written!r}, but {prefix}.index (V2) or {prefix} (V1) does not "
            "exist; the checkpoint was deleted or not copied. Restore an explicit prefix instead"
        )
    raise CheckpointError(
        f"{state_path} names checkpoint {written!r}, outside {checkpoint_dir}, and {checkpoint_dir} has "
        f"no checkpoint called {os.path.basename(prefix)!r}. jaxmeta does not follow a state file out "
        "of its directory; pass that prefix explicitly if you mean to read it"
    )


def write_state(
    save_dir: str,
    model_checkpoint_path: str,
    all_model_checkpoint_paths: list[str],
    *,
    timestamps: list[float] | None = None,
    last_preserved_timestamp: float | None = None,
    latest_filename: str = DEFAULT_FILENAME,
) -> str:
    """Writes the state file atomically (temporary file, then rename); returns its path.

    Paths inside `save_dir` are written relative to it, so the directory can be moved.
    """

    def rel(p: str) -> str:
        return os.path.relpath(p, save_dir) if _inside(p, save_dir) else p

    state = checkpoint_pb2.CheckpointState(
        model_checkpoint_path=rel(model_checkpoint_path),
        all_model_checkpoint_paths=[rel(p) for p in all_model_checkpoint_paths],
        all_model_checkpoint_timestamps=list(timestamps or []),
        last_preserved_timestamp=time.time() if last_preserved_timestamp is None else last_preserved_timestamp,
    )
    path = os.path.join(save_dir or ".", latest_filename)
    atomic_write(path, text_format.MessageToString(state).encode("utf-8"))
    return path
