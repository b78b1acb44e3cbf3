"""`CheckpointReader`: TensorFlow's checkpoint reader API over V1 and V2 checkpoints, without TF."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import CheckpointError
from jaxmeta.checkpoint import _bundle, _state, _v1
from jaxmeta.proto import types_pb2

_SUFFIX = re.compile(r"(\.index|\.meta|\.data-\d{5}-of-\d{5})$")


_BYTES_PER_WORKER = 8 << 20
# Below this, each tensor gets its own allocation: malloc hands back memory that earlier restores
# freed, where a new arena's pages would all fault in again (1.4 MB: ~0.7 ms on a VM).
_ARENA_BYTES = 16 << 20


def _find_prefix(prefix: str) -> tuple[str, str]:
    """(prefix, "v2" | "v1"), accepting a directory or a file name of the checkpoint as well."""
    if os.path.isdir(prefix):
        latest = _state.latest_checkpoint(prefix)
        if latest is None:
            raise CheckpointError(
                f"{prefix} is a directory without a 'checkpoint' state file; pass a checkpoint prefix "
                "such as DIR/model.ckpt-1000"
            )
        prefix = latest
    if os.path.isfile(_bundle.index_path(prefix)):
        return prefix, "v2"
    stripped = _SUFFIX.sub("", prefix)
    if stripped != prefix and os.path.isfile(_bundle.index_path(stripped)):
        return stripped, "v2"  # a file name of a V2 checkpoint (its .index is a table too)
    if any(_v1.is_v1_table(p) for p in _v1.matching_files(prefix)):
        return prefix, "v1"
    raise CheckpointError(
        f"no checkpoint at {prefix!r}: neither {prefix}.index (a V2 checkpoint) nor a V1 checkpoint file "
        "exists. Pass the prefix the files share (model.ckpt-1000, not model.ckpt-1000.index), or a "
        "directory with a 'checkpoint' state file"
    )


class CheckpointReader:
    """Reads the tensors of a TensorFlow checkpoint (V2 bundle or V1 tables), like `tf.train.load_checkpoint`.

    Args:
        prefix: the checkpoint prefix (`dir/model.ckpt-1000`), a V1 file or glob pattern, or a
            directory with a `checkpoint` state file (its latest checkpoint is read).

    Raises:
        CheckpointError: when there is no checkpoint there, or its index is corrupt.

    Example:
        >>> r = CheckpointReader("train/model.ckpt-1000")
        >>> r.list_variables()
        [('dense/bias', [10]), ('dense/kernel', [784, 10]), ('global_step', [])]
        >>> r.get_tensor("dense/bias").dtype
        dtype('float32')
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix, self.format = _find_prefix(os.fspath(prefix))
        self._impl = _bundle.BundleReader(self.prefix) if self.format == "v2" else _v1.V1Reader(self.prefix)

    def __repr__(self) -> str:
        return f"CheckpointReader({self.prefix!r}, format={self.format!r})"

    def close(self) -> None:
        if self.format == "v2":
            self._impl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def list_variables(self) -> list[tuple[str, list[int]]]:
        """`(name, shape)` of every tensor, sorted by name (as `tf.train.list_variables`)."""
        return [(name, list(self._impl.shape(name))) for name in self._impl.names()]

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return {name: list(self._impl.shape(name)) for name in self._impl.names()}

    def get_variable_to_dtype_map(self) -> dict[str, np.dtype]:
        """Name -> NumPy dtype (`object` for strings; bfloat16 from ml_dtypes)."""
        return {name: _dtypes.to_numpy(self._impl.dtype_enum(name)) for name in self._impl.names()}

    def has_tensor(self, name: str) -> bool:
        return name in (self._impl.tensors if self.format == "v1" else self._impl.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._impl.shape(name)

    def dtype_enum(self, name: str) -> int:
        """The TF DataType enum value stored for `name`."""
        return self._impl.dtype_enum(name)

    def nbytes(self, name: str) -> int:
        """Bytes stored for `name` (what reading it costs)."""
        return self._impl.nbytes(name)

    def get_tensor(self, name: str) -> np.ndarray:
        """The tensor `name` as a NumPy array; checksums are verified.

        Raises:
            CheckpointError: when `name` is not in the checkpoint, or its bytes are corrupt.
        """
        return self._impl.read(name)

    def get_tensors(
        self,
        names: Iterable[str],
        *,
        workers: int | None = None,
        on_done: Callable[[str, int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Reads several tensors in parallel threads (file reads and checksums release the GIL).

        Args:
            names: checkpoint keys.
            workers: threads (default: one per 8 MB to read, up to 8 and one per CPU; below 8 MB
                a thread pool costs more than it saves).
            on_done: called with (name, bytes) after each tensor, e.g. for a progress bar.

        Raises:
            CheckpointError: for the first tensor that fails; nothing is returned then.
        """
        names = list(names)
        if not workers:
            total = sum(self.nbytes(n) for n in names if self.has_tensor(n))
            workers = max(1, min(8, os.cpu_count() or 1, len(names), total // _BYTES_PER_WORKER))

        outs = self._buffers(names)

        def report(name: str, value: np.ndarray) -> np.ndarray:
            if on_done is not None:
                on_done(name, value.nbytes if value.dtype != object else 0)
            return value

        def one(name: str) -> np.ndarray:
            return report(name, self._impl.read_checked(name, outs[name]) if name in outs else self._impl.read(name))

        if workers <= 1 or len(names) <= 1:
            if outs:
                self._impl.read_together(outs)  # with as few system calls as the file's layout allows
            return {name: report(name, outs[name]) if name in outs else one(name) for name in names}
        with ThreadPoolExecutor(workers) as pool:
            return dict(zip(names, pool.map(one, names)))

    def _buffers(self, names: list[str]) -> dict[str, np.ndarray]:
        """64-byte aligned arrays to read the plain numeric tensors of a V2 checkpoint into.

        From `_ARENA_BYTES` on they are views of one allocation, which costs far fewer page faults
        than many (they dominate reads from the page cache); the alignment lets `jax.device_put`
        adopt the arrays on CPU.
        """
        if self.format != "v2":
            return {}
        plan, total = [], 0
        for name in dict.fromkeys(names):
            entry = self._impl.entries.get(name)
            if entry is None or entry.slices or entry.dtype == types_pb2.DT_STRING:
                continue
            try:
                shape = self._impl.shape(name)
                dtype = self._impl.check_entry(name, entry, shape)[0]  # the bytes exist in the file
            except Exception:
                continue  # read() reports it, naming the tensor
            nbytes = math.prod(shape) * dtype.itemsize
            plan.append((name, total, nbytes, dtype, shape))
            total += (nbytes + 63) // 64 * 64
        if total < _ARENA_BYTES:
            return {name: _bundle.aligned_empty(shape, dtype) for name, _, _, dtype, shape in plan}
        arena = _bundle.aligned_empty((total,), np.uint8)
        return {name: arena[off : off + n].view(dtype).reshape(shape) for name, off, n, dtype, shape in plan}
