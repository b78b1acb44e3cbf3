"""Lookup tables: `tf.lookup.StaticHashTable` / `KeyValueTensorInitializer` and TF1's
`index_table_from_tensor`, `index_to_string_table_from_tensor` (`HashTable(V2)`,
`InitializeTable(V2)`, `LookupTableImport(V2)`, `LookupTableFind(V2)`, `LookupTableSize(V2)`);
mutable tables, `tf.lookup.experimental.MutableHashTable` / `DenseHashTable` and TF1's
`tf.contrib.lookup` ones (`MutableHashTable(OfTensors)(V2)`, `MutableDenseHashTable(V2)`,
`LookupTableInsert(V2)`, `LookupTableRemoveV2`, `LookupTableExport(V2)`), see `TableContents`;
and their anonymous versions (`AnonymousHashTable`, `AnonymousMutableHashTable(OfTensors)`,
`AnonymousMutableDenseHashTable`: `experimental_is_anonymous=True`), see below.

A static table is a constant: its contents are the keys and values its `InitializeTable` node
reads (or imports), evaluated once when a lookup is built (they must not depend on feeds or variables). So the
initializer need not run first (running it, e.g. `tables_initializer()`, does nothing), and a
lookup of numeric keys is a sorted search that `jax.jit` traces. Strings are host values: a
lookup of string keys, or one that yields strings, needs its keys when the graph is traced (a
constant, or a feed with `Session(jit=False)` / an unjitted function); under `jax.jit`, feed the
lookup's output instead. Tables initialized from files (`InitializeTableFromTextFile`) are
side-effect ops (`ops/io.py`), but for a SavedModel's own vocabulary assets, which
`jaxmeta.load_saved_model` maps to the files under its `assets/` (`graph.assets`).

An anonymous table has no name to share it by: TF makes a new, empty table each time its op runs
(each `Session.run`, each call of a function), which lives only as long as that run. So its contents
never reach the variables dict, `init_variables` or a checkpoint: a mutable one's live in the run's
`OpContext.state`, and a static one's initializer must run in the same run as its lookups (TF says
"Table not initialized" otherwise; jaxmeta raises a GraphError when the run leaves it out).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import FORWARDING, handle_source, known, need_known, program_nodes, register, static
from jaxmeta.ops.strings import _bytes_array, each_once, hash64

# TF2's KeyValueTensorInitializer imports its contents (LookupTableImportV2); TF1's initializes.
_INITIALIZERS = ("InitializeTable", "InitializeTableV2", "LookupTableImport", "LookupTableImportV2")
_IMPORTS = ("LookupTableImport", "LookupTableImportV2")  # also a mutable table's restore
_HASH_TABLES = ("MutableHashTable", "MutableHashTableV2", "MutableHashTableOfTensors", "MutableHashTableOfTensorsV2")
_DENSE_TABLES = ("MutableDenseHashTable", "MutableDenseHashTableV2")
#: Op types of mutable tables, whose contents the variables dict holds (`TableContents`).
MUTABLE_TABLES = frozenset(_HASH_TABLES + _DENSE_TABLES)
_ANONYMOUS_HASH_TABLES = ("AnonymousMutableHashTable", "AnonymousMutableHashTableOfTensors")
#: Op types of anonymous mutable tables: a new table each run, its contents in `OpContext.state`.
ANONYMOUS_MUTABLE_TABLES = frozenset(_ANONYMOUS_HASH_TABLES + ("AnonymousMutableDenseHashTable",))
_MUTABLE = MUTABLE_TABLES | ANONYMOUS_MUTABLE_TABLES
_STATIC_TABLES = ("HashTable", "HashTableV2", "AnonymousHashTable")
_SCALAR_VALUES = ("MutableHashTable", "MutableHashTableV2", "AnonymousMutableHashTable")
_FILE_INITIALIZERS = ("InitializeTableFromTextFile", "InitializeTableFromTextFileV2")


@dataclasses.dataclass(frozen=True)
class TableHandle:
    """A table's output: names the table node (its contents are resolved when a lookup is built,
    or, in a function body that takes the handle as an argument, when the lookup runs)."""

    name: str
    node: Any = dataclasses.field(default=None, compare=False, repr=False)


@register(*_STATIC_TABLES, *MUTABLE_TABLES)
def _hash_table(node):
    if node.type in MUTABLE_TABLES:
        _TableSpec.of(node)  # its attributes are checked when the graph is built
    handle = TableHandle(node.name, node)
    return lambda *empty_and_deleted_keys: handle


@register(*ANONYMOUS_MUTABLE_TABLES, context=True)
def _anonymous_table(node):
    spec = _TableSpec.of(node)
    handle = TableHandle(node.name, node)

    def fn(ctx, *empty_and_deleted_keys):
        ctx.state[spec.state_key] = spec.empty()  # TF makes a new, empty table each time the op runs
        return handle

    return fn


@register("InitializeTable", "InitializeTableV2")
def _initialize_table(node):
    table = _table_node(node)
    if table is not None and table.type in _MUTABLE:
        raise GraphError(f"node {node.name!r} ({node.type}): table {table.name!r} is a {table.type}, which TF "
                         "does not initialize either; insert into it (LookupTableInsertV2) instead")
    # The contents are read statically by each lookup (see the module docstring).
    return lambda table, keys, values: None


def _per_table(make):
    """A builder from `make(node, table) -> fn(ctx, handle, *inputs)`: the table node is found when
    the graph is built, or, for a handle a function body takes as an argument (TF 2 control flow),
    when the op runs, from the handle it is given."""

    def build(node):
        table = _table_node(node)
        if table is not None:
            return make(node, table)
        made: dict[str, Any] = {}

        def fn(ctx, handle, *inputs):
            if not isinstance(handle, TableHandle) or handle.node is None:
                raise GraphError(f"node {node.name!r} ({node.type}): its table handle is a {type(handle).__name__}, "
                                 "not a lookup table's")
            if handle.name not in made:
                made[handle.name] = make(node, _checked_table(node, handle.node))
            return made[handle.name](ctx, handle, *inputs)

        return fn

    return build


@register(*_IMPORTS, context=True, assigns=True)
@_per_table
def _import_table(node, table):
    if table.type not in _MUTABLE:  # a static table's initializer, as above: it changes nothing,
        def initialized(ctx, table, keys, values):  # so graph.function runs it too
            return None

        initialized.assigns = False
        return initialized
    spec = _TableSpec.of(table)

    def fn(ctx, _, keys, values):
        keys, values = need_known(node, "the imported keys and values", "importing into a table needs", keys,
                                  values, hint=_HOST_HINT)
        spec.store(ctx, spec.imported(node, keys, values))

    return fn


def _table_node(node):
    """The table node a lookup's handle input comes from (`handle_source`); None where it is a
    function body's argument (the handle passed in names the table when the op runs)."""
    producer = handle_source(node)
    return None if producer is None else _checked_table(node, producer)


def _checked_table(node, producer):
    if producer.type not in (*_STATIC_TABLES, *_MUTABLE):
        raise GraphError(f"node {node.name!r} ({node.type}): its table {producer.name!r} is a {producer.type}; "
                         f"jaxmeta runs static hash tables ({', '.join(_STATIC_TABLES)}) and mutable ones "
                         f"({', '.join(sorted(_MUTABLE))})")
    return producer


def table_contents(node, table=None) -> tuple[np.ndarray, np.ndarray]:
    """The keys and values of the static table `node` (a lookup) reads (`table`, or the one its
    handle input comes from), from its initializer's inputs.

    Raises:
        GraphError: the table has no initializer, more than one, one that reads a file, or contents
            that are not constants.
    """
    from jaxmeta._interpreter import constant_values

    table = table if table is not None else _table_node(node)
    graph = table.graph
    inits = [graph.nodes[n] for n in graph.consumers(table.name)
             if graph.nodes[n].type in _INITIALIZERS + _FILE_INITIALIZERS]
    where = f"node {node.name!r} ({node.type}): table {table.name!r}"
    if len(inits) != 1:
        raise GraphError(f"{where} has {len(inits)} initializers in the graph; jaxmeta reads a static table's "
                         "contents from its one InitializeTable node")
    init = inits[0]
    _check_same_run(node, table, init, where)
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


def _check_same_run(node, table, init, where: str) -> None:
    """An anonymous static table is new in each run: TF fails a lookup in a run that does not also
    run its initializer ("Table not initialized"), and so does jaxmeta (where it knows the run's
    nodes, `program_nodes`)."""
    nodes = program_nodes()
    if table.type == "AnonymousHashTable" and nodes is not None and table.name in nodes and init.name not in nodes:
        raise GraphError(f"{where} is anonymous: TF makes it anew in each run, so its initializer {init.name!r} "
                         f"must run in the same run as {node.name!r} (TF fails with 'Table not initialized'). "
                         "Make the lookup depend on it (tf.control_dependencies([tf.compat.v1.tables_initializer()])) "
                         "or fetch both in one run")


def _asset(graph, ref) -> str | None:
    """The SavedModel asset file a filename tensor names (`graph.assets`, set by `load_saved_model`)."""
    producer, seen = graph.nodes[ref.node], set()
    while (str(ref) not in graph.assets and producer.type in FORWARDING and producer.inputs
           and producer.name not in seen):  # (a hostile file's Identity cycle ends here)
        seen.add(producer.name)
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


@register("LookupTableFind", "LookupTableFindV2", context=True)
@_per_table
def _lookup_table_find(node, table):
    if table.type in _MUTABLE:
        spec = _TableSpec.of(table)
        return lambda ctx, _, query, default: spec.find(node, spec.load(ctx), query, default)
    find = _static_find(node, table)
    return lambda ctx, table, query, default: find(table, query, default)


def _static_find(node, table):
    keys, values = table_contents(node, table)
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


def _search(xp, sorted_keys, sorted_values, query, default, size=None):
    """Each query's value in the ascending `sorted_keys` (their first `size`; a mutable table's
    padding follows), `default` where it is missing. Values may be vectors (`[n, *value_shape]`)."""
    value_shape = sorted_values.shape[1:]
    default = xp.broadcast_to(xp.asarray(default, sorted_values.dtype), value_shape)
    shape = (*np.shape(query), *value_shape)
    if sorted_keys.shape[0] == 0:
        return xp.broadcast_to(default, shape)
    flat = xp.reshape(query, (-1,))
    at = xp.clip(xp.searchsorted(sorted_keys, flat), 0, sorted_keys.shape[0] - 1)
    hit = xp.asarray(sorted_keys)[at] == flat
    if size is not None:
        hit = hit & (at < size)
    out = xp.where(hit.reshape(-1, *[1] * len(value_shape)), xp.asarray(sorted_values)[at], default)
    return xp.reshape(out, shape)


@register("LookupTableSize", "LookupTableSizeV2", context=True)
@_per_table
def _lookup_table_size(node, table):
    if table.type in _MUTABLE:
        spec = _TableSpec.of(table)
        return lambda ctx, _: spec.load(ctx).size
    keys, _ = table_contents(node, table)
    return lambda ctx, table: np.int64(len(keys))


# --- mutable tables ------------------------------------------------------------------------------

#: The most buckets a dense table may have (more is a corrupt or hostile graph or checkpoint).
MAX_BUCKETS = 1 << 28
_MIN_CAPACITY = 16  # a hash table's arrays: 16 entries, then doubling
_HOST_HINT = (": mutable tables change size, so the ops that change them run on the host (a Session stages "
              "them by itself); lookups and sizes are traced")


@jax.tree_util.register_pytree_node_class
class TableContents:
    """A mutable lookup table's contents, held in the variables dict under the table op's name.

    `graph.step` returns them changed by the graph's `LookupTableInsertV2`, `LookupTableRemoveV2`
    and `LookupTableImportV2`; `graph.saver` restores and saves them under TF's checkpoint keys
    (`<table>-keys`, `<table>-values`); a table missing from the dict is empty, as a new table
    is in TF (`graph.init_variables` adds the empty ones). Lookups and sizes trace under `jax.jit`
    (the contents are a pytree); inserts, removals and imports change sizes and run on concrete
    values (`Session(jit=True)` runs them on the host by itself). An anonymous table's contents
    live only while a run lasts, in its `OpContext.state`, as NumPy (see the module docstring).

    Attributes:
        keys: a `MutableHashTable`'s keys in ascending order in `keys[:size]`, then padding (the
            dtype's largest value): numeric arrays grow by doubling, so a jitted lookup compiles
            again only when the table has doubled. A `MutableDenseHashTable`'s key buckets
            `[buckets, key size]`, TF's own layout (free buckets hold its `empty_key` or
            `deleted_key`).
        values: the values of those keys: `[len(keys), *value_shape]`; dense `[buckets, value size]`.
        size: how many entries the table holds (an int64 scalar).
    """

    def __init__(self, keys: Any, values: Any, size: Any):
        self.keys, self.values, self.size = keys, values, size

    def tree_flatten(self):
        return (self.keys, self.values, self.size), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def __repr__(self) -> str:
        size = known(self.size)
        return (f"TableContents(size={'?' if size is None else int(size)}, keys={np.shape(self.keys)} "
                f"{getattr(self.keys, 'dtype', '?')}, values={np.shape(self.values)} {getattr(self.values, 'dtype', '?')})")


@dataclasses.dataclass(frozen=True)
class _TableSpec:
    """A mutable table op's attributes, parsed once: what its contents look like and how they change."""

    name: str
    dense: bool
    key_dtype: np.dtype
    value_dtype: np.dtype
    value_shape: tuple[int, ...]
    key_shape: tuple[int, ...] = ()
    empty_key: np.ndarray | None = None  # dense: [key size]
    deleted_key: np.ndarray | None = None
    buckets: int = 0
    max_load: float = 0.8
    # An anonymous table's key in `OpContext.state`, where its contents live while a run lasts (a
    # new table each run), not in the variables; per graph, as a function body's names are its own.
    state_key: str | None = None

    @classmethod
    def of(cls, table) -> _TableSpec:
        """The spec of `table`, parsed once per table node (every op on the table asks for it)."""
        specs = table.graph.__dict__.setdefault("_table_specs", {})
        if table.name not in specs:
            specs[table.name] = cls._parse(table)
        return specs[table.name]

    @classmethod
    def _parse(cls, table) -> _TableSpec:
        from jaxmeta._interpreter import constant_values

        where = f"table {table.name!r} ({table.type})"
        key_dtype, value_dtype = table.attr_dtype("key_dtype"), table.attr_dtype("value_dtype")
        if key_dtype.kind not in "iuO":
            raise GraphError(f"{where}: keys of {key_dtype} are not supported (TF's tables take integer or string keys)")
        value_shape = tuple(table.attr_shape("value_shape", ()) or ()) if table.type not in _SCALAR_VALUES else ()
        if any(d < 0 for d in value_shape):
            raise GraphError(f"{where}: its value_shape {list(value_shape)} is not fully defined")
        state_key = f"AnonymousTable:{id(table.graph):x}:{table.name}" if table.type in ANONYMOUS_MUTABLE_TABLES else None
        if table.type in _HASH_TABLES + _ANONYMOUS_HASH_TABLES:
            return cls(table.name, False, key_dtype, value_dtype, value_shape, state_key=state_key)
        empty, deleted = constant_values(table.graph, table.inputs[:2], f"{where}: its empty_key and deleted_key")
        if empty.ndim > 1 or empty.shape != deleted.shape or (empty == deleted).all():
            raise GraphError(f"{where}: empty_key {empty.tolist()} and deleted_key {deleted.tolist()} must be two "
                             "different scalars or vectors of one length")
        buckets, max_load = table.attr_int("initial_num_buckets", 131072), table.attr_float("max_load_factor", 0.8)
        _check_buckets(buckets, where)
        if not 0 < max_load < 1:
            raise GraphError(f"{where}: max_load_factor must be between 0 and 1, got {max_load}")
        return cls(table.name, True, key_dtype, value_dtype, value_shape, empty.shape,
                   empty.astype(key_dtype).reshape(-1), deleted.astype(key_dtype).reshape(-1), buckets, max_load,
                   state_key)

    # -- the contents ----------------------------------------------------------------------------

    @property
    def value_size(self) -> int:
        return int(np.prod(self.value_shape, dtype=np.int64))

    @property
    def anonymous(self) -> bool:
        return self.state_key is not None

    def load(self, ctx) -> TableContents:
        """The table's contents in this run (empty when the variables dict has none)."""
        from jaxmeta._interpreter import HostValue, host_value_error

        if self.anonymous:
            contents = ctx.state.get(self.state_key)
            if contents is None:  # its op runs before every op that reads its handle
                raise GraphError(f"anonymous table {self.name!r} was not made in this run: its handle reached "
                                 "an op without the table op running first (jaxmeta cannot pass it between runs "
                                 "or compiled stages); run the graph with Session(jit=False)")
            return contents
        contents = ctx.variables.get(self.name)
        if contents is None:
            return self.empty()
        if isinstance(contents, HostValue):
            raise host_value_error(self.name)
        if not isinstance(contents, TableContents):
            raise GraphError(f"variables[{self.name!r}] holds a {type(contents).__name__}, not the TableContents "
                             "of a mutable table: pass what graph.step, saver.restore or init_variables returned")
        return contents

    def store(self, ctx, contents: TableContents) -> None:
        if self.anonymous:
            ctx.state[self.state_key] = contents
        else:
            ctx.put(self.name, contents)

    def empty(self) -> TableContents:
        if self.dense:
            keys = np.tile(self.empty_key, (self.buckets, 1))
            return self._contents(keys, np.zeros((self.buckets, self.value_size), self.value_dtype), 0)
        return self._sorted(np.zeros(0, self.key_dtype), np.zeros((0, *self.value_shape), self.value_dtype))

    def _contents(self, keys: np.ndarray, values: np.ndarray, size: int) -> TableContents:
        # An anonymous table's contents never leave the run: as NumPy they stay known while a
        # jax.jit traces it, so that inserts of constant keys run there too.
        where, array = f"table {self.name!r}", (lambda x: x) if self.anonymous else jnp.asarray
        if keys.dtype != object:
            keys = array(_dtypes.canonical(keys, f"{where}: its keys"))
        if values.dtype != object:
            values = array(_dtypes.canonical(values, f"{where}: its values"))
        return TableContents(keys, values, np.int64(size))

    def _sorted(self, keys: np.ndarray, values: np.ndarray) -> TableContents:
        """A hash table's contents from distinct keys in any order: sorted, numeric ones padded."""
        order = np.argsort(keys, kind="stable")
        keys, values, size = keys[order], values[order], len(keys)
        if keys.dtype != object:
            capacity = max(_MIN_CAPACITY, 1 << max(size - 1, 0).bit_length())
            top = np.iinfo(jax.dtypes.canonicalize_dtype(keys.dtype)).max
            keys = np.concatenate([keys, np.full(capacity - size, top, keys.dtype)])
            values = np.concatenate([values, np.zeros((capacity - size, *values.shape[1:]), values.dtype)])
        return self._contents(keys, values, size)

    def _host(self, contents: TableContents, node) -> tuple[np.ndarray, np.ndarray, int]:
        keys, values, size = need_known(node, f"table {self.name!r}'s contents", "changing a table needs",
                                        contents.keys, contents.values, contents.size, hint=_HOST_HINT)
        return keys, values, int(size)

    def _checked(self, node, keys: np.ndarray, values: np.ndarray | None = None):
        """Keys (and values) of an insert, removal or lookup as `[n, key size]` (`[n]` for a hash
        table) and `[n, *value_shape]`, in the table's dtypes; a GraphError when they do not fit."""
        where = f"node {node.name!r} ({node.type})"
        keys = _as_keys(keys)
        if keys.dtype.kind not in "iuO" or (keys.dtype.kind == "O") != (self.key_dtype.kind == "O"):
            raise GraphError(f"{where}: keys of {keys.dtype} for table {self.name!r}, whose keys are {self.key_dtype}")
        key_dims = len(self.key_shape)
        if keys.shape[keys.ndim - key_dims:] != self.key_shape or keys.ndim < key_dims:
            raise GraphError(f"{where}: keys of shape {keys.shape} for table {self.name!r}, whose keys have shape "
                             f"{list(self.key_shape)}")
        batch = keys.shape[:keys.ndim - key_dims]
        keys = keys.astype(self.key_dtype).reshape(-1, self.empty_key.size) if self.dense else \
            keys.astype(self.key_dtype).reshape(-1)
        if values is None:
            return keys, batch
        values = _as_keys(values)  # string values as bytes too
        if values.shape != (*batch, *self.value_shape):
            raise GraphError(f"{where}: values of shape {values.shape} for keys of shape {(*batch, *self.key_shape)}; "
                             f"table {self.name!r} holds values of shape {list(self.value_shape)}")
        return keys, values.astype(self.value_dtype).reshape(len(keys), *self.value_shape)

    # -- lookups (traced when the contents and keys are) -------------------------------------------

    def find(self, node, contents: TableContents, query, default):
        if self.dense:
            return self._dense_find(node, contents, query, default)
        arrays = [contents.keys, contents.values, contents.size, query, default]
        if self.key_dtype.kind == "O" or self.value_dtype.kind == "O":
            arrays = need_known(node, "its keys", "a lookup of string keys or into string values (JAX has no "
                                "strings) needs", *arrays, hint=f", or feed the lookup's output ({node.name}:0)")
            arrays[3] = _as_keys(arrays[3])
        elif static(query, default):
            contents = [known(a) for a in arrays[:3]]
            if all(c is not None for c in contents):  # known now: NumPy in, NumPy out
                arrays = [*contents, query, default]
        keys, values, size, query, default = arrays
        return _search(np if static(keys, values, query, default) else jnp, keys, values, query, default, size)

    def _dense_find(self, node, contents: TableContents, query, default):
        scalar_ints = self.key_dtype.kind != "O" and self.value_dtype.kind != "O" and self.empty_key.size == 1
        parts = [known(v) for v in (contents.keys, contents.values, query, default)]
        if not scalar_ints or all(p is not None for p in parts):
            keys, values, query, default = parts if all(p is not None for p in parts) else need_known(
                node, "its keys and the table's contents", "a lookup of string or vector keys in a dense table "
                "needs", contents.keys, contents.values, query, default, hint=_HOST_HINT)
            query, batch = self._checked(node, query)
            self._refuse_free_keys(node, query)
            found = self._probe(keys, query)
            default = np.broadcast_to(np.asarray(default, values.dtype).reshape(-1), (self.value_size,))
            out = np.where((found >= 0)[:, None], values[np.maximum(found, 0)], default)
            return out.reshape(*batch, *self.value_shape)
        # Traced: every query probes at once, as TF's quadratic probing does one by one. Where TF
        # refuses a lookup of the empty or deleted key, the traced lookup returns the default value.
        keys, values = jnp.asarray(contents.keys), jnp.asarray(contents.values)
        flat = jnp.reshape(query, (-1,)).astype(keys.dtype)
        column, buckets = keys[:, 0], keys.shape[0]
        empty, deleted = (jnp.asarray(_dtypes.canonical(k, "empty_key")[0], keys.dtype)
                          for k in (self.empty_key, self.deleted_key))

        def probe(carry):
            index, probes, found, done = carry
            at = column[index]
            found = jnp.where((at == flat) & ~done, index, found)
            done = done | (at == flat) | (at == empty)
            probes = probes + 1
            return jnp.where(done, index, (index + probes) & (buckets - 1)), probes, found, done

        invalid = (flat == empty) | (flat == deleted)
        start = (flat & (buckets - 1)).astype(jnp.int32)
        found = jnp.full(flat.shape, -1, jnp.int32)
        _, _, found, _ = jax.lax.while_loop(lambda c: ~c[3].all() & (c[1] < buckets), probe,
                                            (start, jnp.int32(0), found, invalid))
        default = jnp.broadcast_to(jnp.asarray(default, values.dtype).reshape(-1), (self.value_size,))
        out = jnp.where((found >= 0)[:, None], values[jnp.maximum(found, 0)], default)
        return out.reshape(*jnp.shape(query), *self.value_shape)

    # -- changes (on concrete values) ----------------------------------------------------------

    def inserted(self, node, contents: TableContents, keys, values) -> TableContents:
        old_keys, old_values, size = self._host(contents, node)
        keys, values = self._checked(node, keys, values)
        if self.dense:
            return self._dense_insert(node, old_keys, old_values, size, keys, values)
        # TF inserts one by one: a key given twice keeps its last value
        last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]
        keys, values = keys[last], values[last]
        keep = ~_members(old_keys[:size], keys)
        return self._sorted(np.concatenate([old_keys[:size][keep], keys]),
                            np.concatenate([old_values[:size][keep], values]))

    def removed(self, node, contents: TableContents, keys) -> TableContents:
        old_keys, old_values, size = self._host(contents, node)
        keys = self._checked(node, keys)[0]
        if not self.dense:
            keep = ~_members(old_keys[:size], np.unique(keys))
            return self._sorted(old_keys[:size][keep], old_values[:size][keep])
        self._refuse_free_keys(node, keys)
        old_keys = old_keys.copy()
        for row in keys:
            found = self._probe(old_keys, row[None])[0]
            if found >= 0:
                old_keys[found] = self.deleted_key
                size -= 1
        return self._contents(old_keys, old_values, size)

    def exported(self, node, contents: TableContents):
        if self.dense:
            return contents.keys, contents.values
        size = int(need_known(node, "the table's size", "exporting a table needs", contents.size,
                              hint=_HOST_HINT)[0])
        return contents.keys[:size], contents.values[:size]

    def imported(self, node, keys: np.ndarray, values: np.ndarray) -> TableContents:
        """The contents after `LookupTableImportV2` (a restore): a hash table's keys and values
        inserted into an empty one; a dense table's buckets, TF's exported layout, as they are."""
        if not self.dense:
            return self.inserted(node, self.empty(), keys, values)
        where = f"node {node.name!r} ({node.type}): table {self.name!r}"
        key_size, count = self.empty_key.size, len(keys) if np.ndim(keys) else 0
        if np.shape(keys) != (count, key_size) or np.shape(values) != (count, self.value_size):
            raise GraphError(f"{where}: imported buckets of shapes {np.shape(keys)} and {np.shape(values)}; the "
                             f"table's are [buckets, {key_size}] and [buckets, {self.value_size}]")
        _check_buckets(count, where)
        keys = np.asarray(keys).astype(self.key_dtype)
        free = (keys == self.empty_key).all(1) | (keys == self.deleted_key).all(1)
        if not free.any():
            raise GraphError(f"{where}: none of the imported buckets is free (holds empty_key), so lookups "
                             "could not end: the checkpoint is corrupt")
        return self._contents(keys, np.asarray(values).astype(self.value_dtype), int((~free).sum()))

    # -- dense tables: TF's MutableDenseHashTable (open addressing, quadratic probing) -------------

    def _hashes(self, keys: np.ndarray) -> list[int]:
        """TF's `HashKey` of each key row: integers as their uint64, strings' `Hash64`, vector
        keys' elements combined with `Hash64Combine`."""
        def scalar(k) -> int:
            return hash64(k if isinstance(k, bytes) else str(k).encode()) if self.key_dtype.kind == "O" \
                else int(k) & _M64
        if keys.shape[1] == 1:
            return [scalar(k) for k in keys[:, 0].tolist()]
        out = []
        for row in keys.tolist():
            h = 0
            for k in row:
                h = (h ^ (scalar(k) + 0x9E3779B97F4A7800 + (h << 10) + (h >> 4))) & _M64
            out.append(h)
        return out

    def _probe(self, buckets: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Each key's bucket, or -1 where the probe reaches a free bucket first (TF's `Find`)."""
        count, found = len(buckets), np.full(len(keys), -1, np.int64)
        index = np.array(self._hashes(keys), np.uint64) & np.uint64(count - 1)
        index, pending, probes = index.astype(np.int64), np.arange(len(keys)), 0
        empty = self.empty_key
        while pending.size:
            at = buckets[index[pending]]
            match = (at == keys[pending]).all(1)
            found[pending[match]] = index[pending[match]]
            pending = pending[~(match | (at == empty).all(1))]
            probes += 1
            if probes >= count and pending.size:
                raise GraphError(f"table {self.name!r}: no free bucket left to end a lookup (a corrupt table)")
            index[pending] = (index[pending] + probes) & (count - 1)
        return found

    def _refuse_free_keys(self, node, keys: np.ndarray) -> None:
        for what, key in (("empty_key", self.empty_key), ("deleted_key", self.deleted_key)):
            if (keys == key).all(1).any():
                raise GraphError(f"node {node.name!r} ({node.type}): the key {key.tolist()} is table "
                                 f"{self.name!r}'s {what}, which TF refuses as a key too")

    def _dense_insert(self, node, buckets, values, size, keys, new_values) -> TableContents:
        self._refuse_free_keys(node, keys)
        count = len(buckets)
        pending = size + len(keys)  # TF grows as if every key were new, in float32 as its kernel
        while np.float32(pending) > np.float32(count) * np.float32(self.max_load):
            count <<= 1
        if count != len(buckets):
            _check_buckets(count, f"node {node.name!r} ({node.type}): table {self.name!r} growing")
            free = (buckets == self.empty_key).all(1) | (buckets == self.deleted_key).all(1)
            old_keys, old_values = buckets[~free], values[~free]
            buckets = np.tile(self.empty_key, (count, 1))
            values = np.zeros((count, self.value_size), self.value_dtype)
            size = self._place(buckets, values, old_keys, old_values, 0)
        else:
            buckets, values = np.array(buckets, self.key_dtype), np.array(values, self.value_dtype)
        size = self._place(buckets, values, keys, new_values.reshape(len(keys), -1), size)
        return self._contents(buckets, values, size)

    def _place(self, buckets, values, keys, new_values, size: int) -> int:
        """Inserts `keys` one by one in place (TF's `DoInsert`); returns the new size."""
        mask = len(buckets) - 1
        empty, deleted = self.empty_key, self.deleted_key
        for i, h in enumerate(self._hashes(keys)):
            index, probes, key = h & mask, 0, keys[i]
            while True:
                at = buckets[index]
                if (at == key).all():
                    break
                if (at == empty).all() or (at == deleted).all():
                    buckets[index] = key
                    size += 1
                    break
                probes += 1
                index = (index + probes) & mask
            values[index] = new_values[i]
        return size


_M64 = (1 << 64) - 1


def _members(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Which of `values` are among the ascending `sorted_keys` (a binary search: `np.isin` compares
    object arrays of strings pairwise)."""
    if not len(sorted_keys):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[at] == values


def _as_keys(keys: Any) -> np.ndarray:
    """Keys (or values) as NumPy; strings as an object array of bytes (a feed may hold `str`)."""
    keys = np.asarray(keys)
    if keys.dtype.kind in "OSU":
        keys = _bytes_array([_as_key(k) for k in keys.reshape(-1).tolist()], keys.shape)
    return keys


def _check_buckets(count: int, where: str) -> None:
    if count < 4 or count & (count - 1) or count > MAX_BUCKETS:
        raise GraphError(f"{where}: {count} buckets; a dense table has a power of 2 of at least 4 and, in "
                         f"jaxmeta, at most {MAX_BUCKETS}")


@register("LookupTableInsert", "LookupTableInsertV2", context=True, assigns=True)
@_per_table
def _lookup_table_insert(node, table):
    spec = _mutable_spec(node, table)

    def fn(ctx, _, keys, values):
        keys, values = need_known(node, "the keys and values", "inserting into a table needs", keys, values,
                                  hint=_HOST_HINT)
        spec.store(ctx, spec.inserted(node, spec.load(ctx), keys, values))

    return fn


@register("LookupTableRemoveV2", context=True, assigns=True)
@_per_table
def _lookup_table_remove(node, table):
    spec = _mutable_spec(node, table)

    def fn(ctx, _, keys):
        keys = need_known(node, "the keys", "removing from a table needs", keys, hint=_HOST_HINT)[0]
        spec.store(ctx, spec.removed(node, spec.load(ctx), keys))

    return fn


@register("LookupTableExport", "LookupTableExportV2", context=True)
@_per_table
def _lookup_table_export(node, table):
    if table.type not in _MUTABLE:  # a static table's contents, sorted as TF exports them
        keys, values = table_contents(node, table)
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], values[order]
        return lambda ctx, _: (keys, values)
    spec = _mutable_spec(node, table)
    return lambda ctx, _: spec.exported(node, spec.load(ctx))


def _mutable_spec(node, table) -> _TableSpec:
    if table.type not in _MUTABLE:
        raise GraphError(f"node {node.name!r} ({node.type}): table {table.name!r} is a {table.type}, which "
                         "cannot change: TF refuses this op on it too")
    return _TableSpec.of(table)


def restored_table(table, keys: np.ndarray, values: np.ndarray) -> TableContents:
    """A mutable table's contents from the keys and values a checkpoint holds (its export)."""
    return _TableSpec.of(table).imported(table, keys, values)


def exported_table(table, contents: TableContents | None) -> tuple[Any, Any]:
    """A mutable table's keys and values as TF exports (and saves) them; empty for None."""
    spec = _TableSpec.of(table)
    return spec.exported(table, spec.empty() if contents is None else contents)


def empty_tables(graph, names=None) -> dict[str, TableContents]:
    """The empty contents of the graph's mutable tables (of those named in `names`)."""
    return {node.name: _TableSpec.of(node).empty() for node in graph.nodes.values()
            if node.type in MUTABLE_TABLES and (names is None or node.name in names)}
