"""`jaxmeta convert`: TF checkpoint <-> Orbax, with the graph's saver choosing the variable names."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


class Progress:
    """A plain-text progress bar on stderr (only drawn for large jobs or a terminal)."""

    def __init__(self, total_bytes: int, label: str, stream: TextIO | None = None, min_bytes: int = 64 << 20):
        self.total = max(total_bytes, 1)
        self.done = 0
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = total_bytes >= min_bytes or getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self._last = 0.0

    def __call__(self, name: str, nbytes: int) -> None:
        self.done += nbytes
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            rate = self.done / max(now - self.start, 1e-9) / 1e9
            self.stream.write(f"\r{self.label} [{bar}] {100 * frac:5.1f}% {self.done / 1e9:.2f}/"
                              f"{self.total / 1e9:.2f} GB {rate:.2f} GB/s")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def convert(
    meta: str,
    checkpoint: str,
    to_orbax: str | None = None,
    to_tf: str | None = None,
    *,
    force: bool = False,
) -> str:
    """Converts a checkpoint of the graph in `meta` between TensorFlow and Orbax.

    Args:
        meta: the MetaGraphDef (`model.ckpt-1000.meta`); its saver maps checkpoint keys to variables.
        checkpoint: with `to_orbax`, the TF checkpoint prefix (or its directory); with `to_tf`, the
            Orbax directory written by `jaxmeta convert --to-orbax`.
        to_orbax: the Orbax directory to write.
        to_tf: the TF checkpoint prefix to write (V2, with `.meta` and state file).
        force: overwrite an existing Orbax directory.

    Returns:
        What was written: the Orbax directory or the TF checkpoint prefix.

    Raises:
        ValueError: unless exactly one of `to_orbax` and `to_tf` is given.
    """
    import jaxmeta
    from jaxmeta._saver import Saver
    from jaxmeta.checkpoint._orbax import restore_orbax, save_orbax
    from jaxmeta.checkpoint._reader import CheckpointReader

    if (to_orbax is None) == (to_tf is None):
        raise ValueError("convert needs exactly one of to_orbax= and to_tf=")
    graph = jaxmeta.import_meta_graph(meta)
    saver = Saver(graph)
    if to_orbax is not None:
        with CheckpointReader(checkpoint) as reader:
            total = sum(reader.nbytes(k) for k in {s.key for s in saver.restore_specs} if reader.has_tensor(k))
            prefix = reader.prefix
        progress = Progress(total, "reading")
        try:
            variables = saver.restore(prefix, progress=progress)
        finally:
            progress.close()
        out = save_orbax(to_orbax, variables, force=force)
        print(f"wrote {len(variables)} variables to {out}", file=sys.stderr)
        return out
    variables, _ = restore_orbax(checkpoint)
    out = saver.save(variables, os.fspath(to_tf))
    print(f"wrote {len(variables)} variables to {out}", file=sys.stderr)
    return out
