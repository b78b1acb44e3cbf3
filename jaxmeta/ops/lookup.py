"""Lookup tables: `tf.lookup.StaticHashTable` / `KeyValueTensorInitializer` and TF1's
`index_table_from_tensor`, `index_to_string_table_from_tensor` (`HashTable(V2)`,
`InitializeTable(V2)`, `LookupTableImport(V2)`, `LookupTableFind(V2)`, `LookupTableSize(V2)`).

A static table is a constant: its contents are the keys and values its `InitializeTable` node
reads (or imports), evaluated once when a lookup is built (they must not depend on feeds or variables). So the
initializer need not run first (running it, e.g. `tables_initializer()`, does nothing), and a
lookup of numeric keys is a sorted search that `jax.jit` traces. Strings are host values: a
lookup of string keys, or one that yields strings, needs its keys when the graph is traced (a
constant, or a feed with `Session(jit=False)` / an unjitted function); under `jax.jit`, feed the
lookup's output instead. Tables initialized from files (`InitializeTableFromTextFile`) are
side-effect ops (`ops/io.py`), but for a SavedModel's own vocabulary assets, which
`jaxmeta.load_saved_model` maps to the files under its `assets/` (`graph.assets`).
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import need_known, register, static
from jaxmeta.ops.strings import _bytes_array, each_once

# TF2's KeyValueTensorInitializer imports its contents (LookupTableImportV2); TF1's initializes.
_INITIALIZERS = ("InitializeTable", "InitializeTableV2", "LookupTableImport", "LookupTableImportV2")
_FILE_INITIALIZERS = ("InitializeTableFromTextFile", "InitializeTableFromTextFileV2")
_FORWARDING = ("Identity", "Enter", "RefEnter", "RefIdentity")


@dataclasses.dataclass(frozen=True)
class TableHandle:
    """A table's output: names the table node (its contents are resolved when a lookup is built)."""

    name: str


@register("HashTable", "HashTableV2")
def _hash_table(node):
    return lambda: TableHandle(node.name)


@register(*_INITIALIZERS)
def _initialize_table(node):
    # The contents are read statically by each lookup (see the module docstring).
    return lambda table, keys, values: None


def _table_node(node):
    """The `HashTable` node a lookup's handle input comes from (through Identity/Enter)."""
    graph, ref = node.graph, node.inputs[0]
    producer, seen = graph.nodes[ref.node], set()
    while producer.type in _FORWARDING and producer.inputs and producer.name not in seen:  # (cycles end)
        seen.add(producer.name)
        producer = graph.nodes[producer.inputs[0].node]
    if producer.type not in ("HashTable", "HashTableV2"):
        raise GraphError(f"node {node.name!r} ({node.type}): its table {producer.name!r} is a {producer.type}; "
                         "jaxmeta runs static hash tables (HashTable, HashTableV2) only")
    return producer


def table_contents(node) -> tuple[np.ndarray, np.ndarray]:
    """The keys and values of the table `node` (a lookup) reads, from its initializer's inputs.

    Raises:
        GraphError: the table has no initializer, more than one, one that reads a file, or contents
            that are not constants.
    """
    from jaxmeta._interpreter import constant_values

    table = _table_node(node)
    graph = table.graph
    inits = [graph.nodes[n] for n in graph.consumers(table.name)
             if graph.nodes[n].type in _INITIALIZERS + _FILE_INITIALIZERS]
    where = f"node {node.name!r} ({node.type}): table {table.name!r}"
    if len(inits) != 1:
        raise GraphError(f"{where} has {len(inits)} initializers in the graph; jaxmeta reads a static table's "
                         "contents from its one InitializeTable node")
    init = inits[0]
    if init.type in _FILE_INITIALIZERS:
        asset = _asset(graph, init.inputs[1])
        if asset is None:
            raise GraphError(f"{where} is initialized by {init.type} ({init.name!r}), which reads a file: read it "
                             f"in Python and feed the lookup's result ({node.name}:0) instead (a SavedModel's "
                             f"vocabulary assets are read by jaxmeta.load_saved_model)")
        return _text_file_contents(init, asset, table, where)
    keys, values = constant_values(graph, init.inputs[1:3], f"{where}: its keys and values")
    if keys.shape != values.shape[:1] + keys.shape[1:] or keys.ndim != 1:
        raise GraphError(f"{where}: keys {keys.shape} and values {values.shape} must be vectors of one length")
    return keys, values


def _asset(graph, ref) -> str | None:
    """The SavedModel asset file a filename tensor names (`graph.assets`, set by `load_saved_model`)."""
    producer = graph.nodes[ref.node]
    while str(ref) not in graph.assets and producer.type in _FORWARDING and producer.inputs:
        ref = producer.inputs[0]
        producer = graph.nodes[ref.node]
    return graph.assets.get(str(ref))


#: The largest vocabulary file a table reads (a bigger one is a corrupt or hostile SavedModel).
MAX_TEXT_FILE_BYTES = 1 << 31
_WHOLE_LINE, _LINE_NUMBER = -2, -1  # TF's TextFileIndex


def _text_file_contents(init, path: str, table, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A table's keys and values from a text file, as TF's `InitializeTableFromTextFile` reads it:
    one entry per line, a key and a value from columns split by `delimiter` (or the whole line, or
    the line number plus `offset`), from the first `vocab_size` lines (all with -1)."""
    key_index, value_index = init.attr_int("key_index"), init.attr_int("value_index")
    vocab_size, offset = init.attr_int("vocab_size", -1), init.attr_int("offset", 0)
    delimiter = init.attr_bytes("delimiter") if init.has_attr("delimiter") else b"\t"
    key_dtype, value_dtype = table.attr_dtype("key_dtype"), table.attr_dtype("value_dtype")
    try:
        if os.path.getsize(path) > MAX_TEXT_FILE_BYTES:
            raise GraphError(f"{where}: its vocabulary {path!r} is larger than jaxmeta's limit of "
                             f"{MAX_TEXT_FILE_BYTES} bytes")
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as e:
        raise GraphError(f"{where}: cannot read its vocabulary {path!r}: {e.strerror or e}") from None
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if b"" in lines[:vocab_size] if vocab_size > 0 else b"" in lines:
        raise GraphError(f"{where}: its vocabulary {path!r} has an empty line (line {lines.index(b'')}), which TF "
                         f"refuses too")
    if vocab_size > 0:
        if len(lines) < vocab_size:
            raise GraphError(f"{where}: vocab_size is {vocab_size} but {path!r} has {len(lines)} lines")
        lines = lines[:vocab_size]

    def column(index: int, dtype: np.dtype, what: str) -> np.ndarray:
        if index == _LINE_NUMBER:
            return np.arange(offset, offset + len(lines), dtype=dtype)
        items = []
        for n, line in enumerate(lines):
            fields = [line] if index == _WHOLE_LINE else line.split(delimiter)
            if index >= len(fields):
                raise GraphError(f"{where}: line {n} of {path!r} has {len(fields)} columns, not {what} column "
                                 f"{index}: {line!r}")
            items.append(fields[max(index, 0)])
        if np.dtype(dtype).kind == "O":
            return _bytes_array(items, (len(items),))
        try:
            return np.array([int(v) if np.dtype(dtype).kind in "iu" else float(v) for v in items], dtype)
        except ValueError:
            raise GraphError(f"{where}: {path!r} has a {what} that is not a {np.dtype(dtype).name}") from None

    return column(key_index, key_dtype, "key"), column(value_index, value_dtype, "value")


def _as_key(x):
    return x.encode() if isinstance(x, str) else x


@register("LookupTableFind", "LookupTableFindV2")
def _lookup_table_find(node):
    keys, values = table_contents(node)
    mapping: dict = {}
    for k, v in zip(keys.tolist(), values.tolist()):
        if mapping.setdefault(_as_key(k), v) != v:  # TF's InitializeTable refuses it too
            raise GraphError(f"node {node.name!r} ({node.type}): the table holds key {k!r} twice, with values "
                             f"{mapping[_as_key(k)]!r} and {v!r}")
    strings = keys.dtype == object or values.dtype == object
    if not strings:
        sorted_keys = np.array(sorted(mapping), keys.dtype)
        sorted_values = np.array([mapping[k] for k in sorted_keys.tolist()], values.dtype)

    def fn(table, query, default):
        if strings:
            query, default = need_known(node, "its keys", "a lookup of string keys or into string values (JAX "
                                        "has no strings) needs", query, default,
                                        hint=f", or feed the lookup's output ({node.name}:0)")
            fallback = default.item()
            found = each_once(lambda q: mapping.get(_as_key(q), fallback), np.asarray(query).reshape(-1).tolist())
            return np.array(found, values.dtype).reshape(np.shape(query))
        if static(query, default):
            return _search(np, sorted_keys, sorted_values, np.asarray(query), default)
        where = f"node {node.name!r} ({node.type}): the table's"
        return _search(jnp, _dtypes.canonical(sorted_keys, f"{where} keys"),
                       _dtypes.canonical(sorted_values, f"{where} values"), query, default)

    return fn


def _search(xp, sorted_keys, sorted_values, query, default):
    """Each query's value in the sorted table, `default` where it is missing."""
    default = xp.asarray(default, sorted_values.dtype)
    if sorted_keys.size == 0:
        return xp.broadcast_to(default, xp.shape(query))
    at = xp.clip(xp.searchsorted(sorted_keys, query), 0, sorted_keys.size - 1)
    return xp.where(xp.asarray(sorted_keys)[at] == query, xp.asarray(sorted_values)[at], default)


@register("LookupTableSize", "LookupTableSizeV2")
def _lookup_table_size(node):
    keys, _ = table_contents(node)
    return lambda table: np.int64(len(keys))
