"""`Saver`: restores and saves a graph's variables the way its own TF1 Saver subgraph does.

The mapping from checkpoint keys to variables is read from the graph, never guessed from names:
from the SaverDef's restore op, walk back to the RestoreV2 / RestoreSlice / Restore nodes, read their
`tensor_names` and `shape_and_slices` constants, and follow each restored output (through Identity)
to the Assign / AssignVariableOp it feeds and that op's variable. Savers built with a dict
`var_list`, several savers in one graph, partitioned variables (each part restores its slice of the
saved tensor) and resource variables all come out right. Saving uses the keys of the save subgraph
(SaveV2 / SaveSlices / Save) the same way. Saveable resources that are not variables save as
TF's do, several tensors ("parts") under one key each (see `_RESOURCES`): a mutable lookup table's
exported keys and values, restored through its `LookupTableImportV2` (the variables dict holds
`TableContents`; a table it lacks saves empty), and a boosted-trees ensemble's stamp and
serialized proto, restored through its `BoostedTreesDeserializeEnsemble` (the dict holds a
`TreeEnsemble`), each under the resource op's name. A saveable whose checkpoint tensors are
computed from a variable (`tf.contrib.cudnn_rnn`'s opaque parameters, saved as canonical weights)
restores by running its restore subgraph's transform on the restored tensors, and saves by running
its save subgraph's, in jaxmeta; only pure tensor ops may appear there (`_TRANSFORM_OPS`).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import CheckpointError, GraphError
from jaxmeta._graph import VARIABLE_OPS, Graph, Node, TensorRef
from jaxmeta.checkpoint import _slices
from jaxmeta.checkpoint._reader import CheckpointReader
from jaxmeta.checkpoint._state import latest_checkpoint, write_state
from jaxmeta.checkpoint._writer import SliceValue, write_checkpoint
from jaxmeta.ops import boosted_trees, lookup
from jaxmeta.proto import saver_pb2

_PASS_THROUGH = frozenset({"Identity", "Snapshot", "ReadVariableOp", "RefIdentity", "StopGradient"})
_RESTORE_OPS = frozenset({"RestoreV2", "RestoreSlice", "Restore"})
_SAVE_OPS = frozenset({"SaveV2", "SaveSlices", "Save"})


@dataclasses.dataclass(frozen=True)
class _Resource:
    """How TF checkpoints one kind of resource that is not a variable: its `parts` (one checkpoint
    key each) are the outputs of its `save_ops` and the inputs 1.. of its `restore_ops` (input 0 of
    both is the resource's handle); the variables dict holds its state under the resource op's
    name.

    Attributes:
        restored: `(resource node, {part: array}) -> state`, or None for a resource the variables
            do not keep; raises GraphError when they do not fit.
        exported: `(resource node, state or None) -> parts in order`, or None when the state is
            missing and cannot be saved.
    """

    op_types: frozenset[str]
    restore_ops: frozenset[str]
    save_ops: frozenset[str]
    parts: tuple[str, ...]
    restored: Callable[[Node, dict[str, np.ndarray]], Any]
    exported: Callable[[Node, Any], tuple[Any, ...] | None]


_RESOURCES = (
    _Resource(lookup.MUTABLE_TABLES, frozenset({"LookupTableImport", "LookupTableImportV2"}),
              frozenset({"LookupTableExport", "LookupTableExportV2"}), ("keys", "values"),
              lambda node, parts: lookup.restored_table(node, parts["keys"], parts["values"]),
              lookup.exported_table),
    # TF makes an anonymous table anew in every run, so its saved contents are always empty and a
    # restore fills a table that the run then drops: nothing enters the variables.
    _Resource(lookup.ANONYMOUS_MUTABLE_TABLES, frozenset({"LookupTableImport", "LookupTableImportV2"}),
              frozenset({"LookupTableExport", "LookupTableExportV2"}), ("keys", "values"),
              lambda node, parts: None, lambda node, state: lookup.exported_table(node, None)),
    _Resource(boosted_trees.ENSEMBLE_OPS, frozenset({"BoostedTreesDeserializeEnsemble"}),
              frozenset({"BoostedTreesSerializeEnsemble"}), ("stamp", "serialized"),
              lambda node, parts: boosted_trees.restored_ensemble(node, parts["stamp"], parts["serialized"]),
              boosted_trees.exported_ensemble),
)
#: Op types of the resources a Saver restores and saves besides variables.
RESOURCE_OPS = frozenset().union(*(r.op_types for r in _RESOURCES))


def _resource(op_type: str) -> _Resource | None:
    return next((r for r in _RESOURCES if op_type in r.op_types), None)


@dataclasses.dataclass(frozen=True)
class SaveSpec:
    """One checkpoint tensor restored into (or saved from) one variable, or a slice of it.

    Attributes:
        key: the checkpoint key.
        variable: the variable op's name (the key of the variables dict).
        shape_and_slice: `""` for a whole tensor, else TF's `"10 4 0,5:0,4"` (full shape, slice).
        dtype: the DataType enum the graph restores or saves it as.
        part: for a saveable resource (`variable` is the resource op, see `_RESOURCES`), which
            of its tensors the key holds (a table's `"keys"` or `"values"`, an ensemble's
            `"stamp"` or `"serialized"`); for a computed value, the restore op's output the key
            fills; `""` for a variable.
        computed: for a saveable whose checkpoint tensors are not the variable's value but
            computed from it (`tf.contrib.cudnn_rnn`'s opaque parameters, saved as canonical
            weights): the tensor that computes the variable from the restored keys (restore
            specs) or the key's value from the variables (save specs); `""` otherwise.
    """

    key: str
    variable: str
    shape_and_slice: str
    dtype: int
    part: str = ""
    computed: str = ""


class Saver:
    """Restores and saves the variables of an imported graph through one of its TF1 Savers.

    Args:
        graph: the imported graph.
        saver_def: which saver to use (a jaxmeta or TF SaverDef message); the graph's own
            (`graph.saver_def`, from the MetaGraphDef) by default.

    Raises:
        GraphError: when the graph has no SaverDef, or its restore subgraph cannot be read.

    Example:
        >>> g = jaxmeta.import_meta_graph("train/model.ckpt-1000.meta")
        >>> variables = g.saver.restore("train/model.ckpt-1000")
        >>> g.saver.save(variables, "out/model.ckpt", global_step=1001)
        'out/model.ckpt-1001'
    """

    def __init__(self, graph: Graph, saver_def: Any = None):
        self.graph = graph
        if saver_def is None:
            saver_def = graph.saver_def
        if saver_def is None:
            raise GraphError(
                "the graph has no SaverDef (the MetaGraphDef was exported without a saver); pass "
                "saver_def=, or read tensors directly with jaxmeta.CheckpointReader"
            )
        if not isinstance(saver_def, saver_pb2.SaverDef):
            saver_def = saver_pb2.SaverDef.FromString(saver_def.SerializeToString())
        self.saver_def = saver_def
        self.restore_specs = _restore_specs(graph, saver_def.restore_op_name)
        self._save_specs: list[SaveSpec] | None = None
        self._variable_shapes: dict[str, tuple[int, ...] | None] = {}
        self.last_checkpoints: list[tuple[str, float]] = []
        self._last_preserved = time.time()

    def __repr__(self) -> str:
        return f"<jaxmeta.Saver {self.saver_def.restore_op_name!r}: {len(self.restore_specs)} tensors>"

    @property
    def save_specs(self) -> list[SaveSpec]:
        """The tensors the save subgraph writes (the restore mapping when it has none)."""
        if self._save_specs is None:
            self._save_specs = _save_specs(self.graph, self.saver_def.save_tensor_name) or self.restore_specs
        return self._save_specs

    def variable_names(self) -> list[str]:
        """Op names of the variables this saver restores."""
        return list(dict.fromkeys(s.variable for s in self.restore_specs))

    # --- restore -------------------------------------------------------------------------------

    def restore(
        self,
        prefix_or_sess: Any,
        prefix: str | os.PathLike | None = None,
        variables: Mapping[str, Any] | None = None,
        partial: bool = False,
        progress: Callable[[str, int], None] | None = None,
    ) -> dict[str, Any]:
        """Reads the saver's variables from a checkpoint.

        Args:
            prefix_or_sess: the checkpoint prefix (or a directory with a `checkpoint` state file),
                or a `jaxmeta.Session`, as TF1's `saver.restore(sess, prefix)`.
            prefix: the prefix when the first argument is a Session.
            variables: a variables dict to merge the restored values into.
            partial: skip variables whose key is not in the checkpoint (they keep what `variables`
                holds, or are absent) instead of failing. Shape and dtype mismatches are errors
                either way.
            progress: called with (checkpoint key, bytes) after each tensor is read.

        Returns:
            `{variable op name: jax.Array}` (NumPy object arrays for string variables), merged
            over `variables` when given. With a Session, its `variables` are updated too.

        Raises:
            CheckpointError: listing every missing key (unless `partial`) and every shape or dtype
                mismatch, before anything is returned.
            PrecisionError: an int64 value that does not fit int32 while JAX runs without x64.
        """
        sess = None
        if hasattr(prefix_or_sess, "variables") and hasattr(prefix_or_sess, "graph"):
            sess = prefix_or_sess
        elif prefix is not None:
            raise TypeError("restore(prefix, prefix=...): pass the prefix once, or a Session first")
        else:
            prefix = prefix_or_sess
        if prefix is None:
            raise CheckpointError(
                "no checkpoint prefix given (latest_checkpoint() returns None when a directory has no "
                "'checkpoint' state file); pass a prefix such as DIR/model.ckpt-1000"
            )
        prefix = os.fspath(prefix)
        if os.path.isdir(prefix):
            found = latest_checkpoint(prefix)
            if found is None:
                raise CheckpointError(f"{prefix} has no 'checkpoint' state file; pass a checkpoint prefix")
            prefix = found
        with CheckpointReader(prefix) as reader:
            arrays = self._read(reader, partial, progress)
        resources = {name: arrays.pop(name) for name in list(arrays) if isinstance(arrays[name], dict)}
        restored = _all_to_device(arrays)
        computed = {s.variable: s.computed for s in self.restore_specs if s.computed}
        for name, parts in resources.items():
            node = self.graph.nodes[name]
            try:
                if name in computed:
                    fn = self.graph.function(computed[name], list(parts))
                    restored[name] = fn({}, *parts.values())
                else:
                    state = _resource(node.type).restored(node, parts)
                    if state is not None:
                        restored[name] = state
            except (GraphError, KeyError) as e:
                raise CheckpointError(f"checkpoint {prefix} does not fit {node.type} {name!r}: {e}") from None
        out = dict(variables or {})
        out.update(restored)
        if sess is not None:
            sess.variables = {**sess.variables, **restored}
        return out

    def _read(self, reader: CheckpointReader, partial: bool, progress=None) -> dict[str, np.ndarray]:
        problems: list[str] = []
        by_var: dict[str, list[SaveSpec]] = {}
        for spec in self.restore_specs:
            by_var.setdefault(spec.variable, []).append(spec)
        wanted: list[SaveSpec] = []
        for var, specs in by_var.items():
            missing = [s.key for s in specs if not reader.has_tensor(s.key)]
            if missing:
                if not partial:
                    problems.append(f"  {var}: key {missing[0]!r} is not in the checkpoint")
                continue
            for s in specs:
                problems += self._check(reader, s)
            wanted += specs
        if problems:
            raise CheckpointError(
                f"checkpoint {reader.prefix} does not fit the graph's saver "
                f"({self.saver_def.restore_op_name}):\n" + "\n".join(problems) + "\n"
                "Pass partial=True to skip variables missing from the checkpoint, or check that the "
                "checkpoint belongs to this MetaGraphDef."
            )
        keys = list(dict.fromkeys(s.key for s in wanted))
        values = reader.get_tensors(keys, on_done=progress)
        out: dict[str, np.ndarray] = {}
        for spec in wanted:
            value = values[spec.key]
            if spec.part:  # one of a resource's tensors: made into its state by restore()
                out.setdefault(spec.variable, {})[spec.part] = value
                continue
            parsed = _slices.parse_shape_and_slice(spec.shape_and_slice, where=f"key {spec.key!r}")
            if parsed is not None:  # one part of a partitioned variable
                value = np.ascontiguousarray(value[_slices.index(parsed[1])])
            out[spec.variable] = value
        return out

    def _check(self, reader: CheckpointReader, spec: SaveSpec) -> list[str]:
        stored_dtype = reader.dtype_enum(spec.key)
        stored_shape = reader.shape(spec.key)
        problems = []
        if spec.dtype and _dtypes.base_enum(spec.dtype) != stored_dtype:
            problems.append(
                f"  {spec.variable}: key {spec.key!r} holds {_dtypes.short_name(stored_dtype)}, the graph "
                f"restores {_dtypes.short_name(spec.dtype)}"
            )
        parsed = _slices.parse_shape_and_slice(spec.shape_and_slice, where=f"key {spec.key!r}")
        if parsed is not None:
            full_shape, extents = parsed
            if tuple(stored_shape) != tuple(full_shape):
                problems.append(
                    f"  {spec.variable}: key {spec.key!r} has shape {list(stored_shape)}, the partitioned "
                    f"variable's full shape is {list(full_shape)}"
                )
            want = _slices.slice_shape(extents)
        else:
            want = None
        var_shape = None if spec.computed else self._variable_shape(spec.variable)
        if var_shape is not None:
            got = want if want is not None else tuple(stored_shape)
            if len(var_shape) != len(got) or any(v >= 0 and v != g for v, g in zip(var_shape, got)):
                problems.append(
                    f"  {spec.variable}: key {spec.key!r} has shape {list(got)}, the variable has "
                    f"shape {list(var_shape)}"
                )
        return problems

    def _variable_shape(self, name: str) -> tuple[int, ...] | None:
        if name not in self._variable_shapes:
            node = self.graph.nodes.get(name)
            has = node is not None and node.has_attr("shape")
            self._variable_shapes[name] = node.attr_shape("shape") if has else None
        return self._variable_shapes[name]

    # --- save ----------------------------------------------------------------------------------

    def save(
        self,
        variables_or_sess: Any,
        save_path: str | os.PathLike,
        global_step: Any = None,
        latest_filename: str = "checkpoint",
        write_meta_graph: bool = True,
        write_state: bool = True,
    ) -> str:
        """Writes a V2 checkpoint of the saver's variables that TF1's `Saver.restore` reads.

        The keys, slices and dtypes are those of the graph's save subgraph; values JAX holds in
        32 bits (x64 off) are written in the 64-bit type the graph declares. Files are written under
        temporary names and renamed; the `.meta` (when the graph can export one), then the state
        file follow, and checkpoints beyond the SaverDef's `max_to_keep` that this Saver wrote are
        deleted last.

        Args:
            variables_or_sess: `{variable op name: array}`, or a Session (its `variables`).
            save_path: the prefix, e.g. `out/model.ckpt`.
            global_step: appended as `-N` when given (an int or a scalar array).
            latest_filename: the state file's name.
            write_meta_graph: also write `PREFIX.meta`.
            write_state: update the state file (and apply `max_to_keep`).

        Returns:
            The checkpoint prefix written.

        Raises:
            CheckpointError: listing every variable the dict lacks, or values that do not fit.
        """
        variables = getattr(variables_or_sess, "variables", variables_or_sess)
        save_path = os.fspath(save_path)
        prefix = save_path if global_step is None else f"{save_path}-{int(np.asarray(global_step))}"
        tensors: dict[str, Any] = {}
        dtypes: dict[str, int] = {}
        missing = []
        exports: dict[str, tuple[Any, ...] | None] = {}
        computed = [spec for spec in self.save_specs if spec.computed]
        if computed:
            try:
                values = self.graph.function([spec.computed for spec in computed])(variables)
            except (GraphError, KeyError) as e:
                raise CheckpointError(f"cannot save {prefix}: computing the saveables' tensors failed: {e}") from None
            for spec, value in zip(computed, values):
                tensors[spec.key] = value
                dtypes[spec.key] = _dtypes.base_enum(spec.dtype)
        for spec in self.save_specs:
            if spec.computed:
                continue
            if spec.part:  # one of a resource's tensors (a table the dict lacks saves empty)
                node = self.graph.nodes[spec.variable]
                kind = _resource(node.type)
                if spec.variable not in exports:
                    exports[spec.variable] = kind.exported(node, variables.get(spec.variable))
                if exports[spec.variable] is None:
                    missing.append(f"  {spec.variable} (checkpoint key {spec.key!r})")
                    continue
                tensors[spec.key] = exports[spec.variable][kind.parts.index(spec.part)]
                dtypes[spec.key] = _dtypes.base_enum(spec.dtype)
                continue
            if spec.variable not in variables:
                missing.append(f"  {spec.variable} (checkpoint key {spec.key!r})")
                continue
            value = variables[spec.variable]
            dtypes[spec.key] = _dtypes.base_enum(spec.dtype)
            parsed = _slices.parse_shape_and_slice(spec.shape_and_slice, where=f"key {spec.key!r}")
            if parsed is None:
                tensors[spec.key] = value
            else:
                full_shape, extents = parsed
                tensors.setdefault(spec.key, []).append(SliceValue(full_shape, extents, np.asarray(value)))
        if missing:
            raise CheckpointError(
                f"cannot save {prefix}: the variables dict lacks\n" + "\n".join(missing) + "\n"
                "Pass every variable the graph's saver writes (e.g. the dict restore() or init_variables() returned)."
            )
        write_checkpoint(prefix, tensors, dtypes=dtypes)
        if write_meta_graph:
            if hasattr(self.graph, "export_meta_graph"):
                self.graph.export_meta_graph(prefix + ".meta", saver_def=self.saver_def)
            # else: TODO(checkpoints) write the .meta once Graph can export itself.
        if write_state:
            self._record(prefix, latest_filename)
        return prefix

    def _record(self, prefix: str, latest_filename: str) -> None:
        now = time.time()
        self.last_checkpoints = [(p, t) for p, t in self.last_checkpoints if p != prefix]
        self.last_checkpoints.append((prefix, now))
        doomed = []
        keep = self.saver_def.max_to_keep
        if keep and keep > 0:
            while len(self.last_checkpoints) > keep:
                doomed.append(self.last_checkpoints.pop(0))
        write_state(
            os.path.dirname(prefix),
            prefix,
            [p for p, _ in self.last_checkpoints],
            timestamps=[t for _, t in self.last_checkpoints],
            last_preserved_timestamp=self._last_preserved,
            latest_filename=latest_filename,
        )
        hours = self.saver_def.keep_checkpoint_every_n_hours
        for path, stamp in doomed:
            if hours and stamp - self._last_preserved > hours * 3600:
                self._last_preserved = stamp  # TF keeps one checkpoint every N hours
                continue
            _delete_checkpoint(path)


def _delete_checkpoint(prefix: str) -> None:
    for path in [prefix + ".index", prefix + ".meta", *glob.glob(glob.escape(prefix) + ".data-?????-of-?????")]:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _all_to_device(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every value as a jax.Array (string variables stay NumPy object arrays), in ONE transfer.

    A single batched `jax.device_put` of the list costs about what one call per variable costs
    for one variable; per-variable calls made small checkpoints restore several times slower
    than TF.
    """
    out: dict[str, Any] = {}
    names, values = [], []
    for name, value in arrays.items():
        if value.dtype == object:
            out[name] = value
            continue
        names.append(name)
        values.append(_dtypes.canonical(value, f"variable {name}"))
    for name, array in zip(names, _device_put_all(values)):
        out[name] = array
    return {name: out[name] for name in arrays}  # the checkpoint's order, as before


def _device_put_all(values: list[np.ndarray]) -> list[Any]:
    """What `jax.device_put(values)` returns (uncommitted arrays on the default device), faster.

    `jax.device_put` spends some 25 us of Python on each array, which made restoring a checkpoint of
    a few MB slower than TF; XLA's client call underneath it costs a third of that. A JAX without
    that call as this code knows it, or a default device set through `jax.default_device`, takes
    `jax.device_put`.
    """
    if getattr(jax.config, "jax_default_device", None) is None:
        try:
            from jax._src import core
            from jax._src.lib import xla_client

            device = jax.local_devices()[0]  # what jax.device_put picks; jax.devices()[0] may be another process's
            sharding = jax.sharding.SingleDeviceSharding(device)
            return [
                xla_client.batched_device_put(core.ShapedArray(v.shape, v.dtype), sharding, [v], [device], False)
                for v in values
            ]
        except (ImportError, AttributeError, TypeError):
            pass
    return jax.device_put(values)


def _to_device(value: np.ndarray, name: str) -> Any:
    """One value as a jax.Array (a string variable stays a NumPy object array)."""
    if value.dtype == object:
        return value
    return jax.device_put(_dtypes.canonical(value, f"variable {name}"))


# --- reading the saver subgraphs ---------------------------------------------------------------


def _node(graph: Graph, name: str, what: str) -> Node:
    try:
        return graph.get_operation_by_name(name)
    except (GraphError, KeyError):
        raise GraphError(f"the SaverDef's {what} {name!r} is not in the graph") from None


def _forwarded(graph: Graph, ref: TensorRef) -> tuple[Node, int]:
    """The node and output that a chain of pass-through ops (Identity, ...) starting at `ref`
    forwards; a hostile graph's cycle of them ends the walk where it closes."""
    node, index, seen = graph.get_operation_by_name(ref.node), ref.index, set()
    while node.type in _PASS_THROUGH and node.inputs and node.name not in seen:
        seen.add(node.name)
        index = node.inputs[0].index
        node = graph.get_operation_by_name(node.inputs[0].node)
    return node, index


def _const_strings(graph: Graph, ref: TensorRef, where: str) -> list[str]:
    node, _ = _forwarded(graph, ref)
    if node.type != "Const":
        raise GraphError(f"{where}: input {node.name!r} is a {node.type}, expected a Const of checkpoint keys")
    values = np.asarray(node.attr_tensor("value"), dtype=object).reshape(-1)
    try:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    except UnicodeDecodeError:
        raise GraphError(f"{where}: the checkpoint keys in {node.name!r} are not UTF-8 text") from None


def _variable_of(graph: Graph, ref: TensorRef) -> Node | None:
    node, _ = _forwarded(graph, ref)
    return node if node.type in VARIABLE_OPS else None


def _resource_of(graph: Graph, ref: TensorRef, kind: _Resource) -> Node | None:
    node, _ = _forwarded(graph, ref)
    return node if node.type in kind.op_types else None


def _resource_behind(graph: Graph, node: Node, role: str) -> tuple[_Resource, Node] | None:
    """The kind and node of the resource that `node`, one of its kind's `role` ops ("save_ops" or
    "restore_ops"), exports or imports (its input 0 is the resource's handle), or None."""
    for kind in _RESOURCES:
        if node.type in getattr(kind, role) and node.inputs:
            resource = _resource_of(graph, node.inputs[0], kind)
            if resource is not None:
                return kind, resource
    return None


def _restore_source(graph: Graph, ref: TensorRef) -> tuple[Node, int] | None:
    node, index = _forwarded(graph, ref)
    return (node, index) if node.type in _RESTORE_OPS else None


def _restore_specs(graph: Graph, restore_op_name: str) -> list[SaveSpec]:
    root = _node(graph, TensorRef.parse(restore_op_name).node, "restore op")
    specs: list[SaveSpec] = []
    keys: dict[str, tuple[list[str], list[str], list[int]]] = {}  # a restore node's, read once for all outputs

    def visit(node: Node) -> bool:
        if node.type in ("Assign", "AssignVariableOp") and len(node.inputs) >= 2:
            source = _restore_source(graph, node.inputs[1])
            var = _variable_of(graph, node.inputs[0])
            if source is not None and var is not None:
                specs.append(_spec_from_restore(graph, source[0], source[1], var.name, keys))
                return True
            leaves = _computed_from(graph, node.inputs[1], _RESTORE_OPS) if var is not None else None
            if leaves:
                for ref in leaves:
                    leaf = graph.get_operation_by_name(ref.node)
                    spec = _spec_from_restore(graph, leaf, ref.index, var.name, keys)
                    specs.append(dataclasses.replace(spec, part=str(ref), computed=str(node.inputs[1])))
                return True
        found = _resource_behind(graph, node, "restore_ops")
        if found is not None and len(node.inputs) > len(found[0].parts):
            kind, resource = found
            sources = [_restore_source(graph, ref) for ref in node.inputs[1:1 + len(kind.parts)]]
            if None not in sources:
                for part, (source, index) in zip(kind.parts, sources):
                    spec = _spec_from_restore(graph, source, index, resource.name, keys)
                    specs.append(dataclasses.replace(spec, part=part))
                return True
        return node.type in _RESTORE_OPS or node.type in VARIABLE_OPS or node.type == "Const"

    _walk_up(graph, root.name, visit)
    if not specs:
        raise GraphError(
            f"the restore op {restore_op_name!r} assigns no variable from a RestoreV2/RestoreSlice/Restore "
            "node; the SaverDef does not belong to this graph"
        )
    specs.sort(key=lambda s: (s.variable, s.key))
    return specs


#: Ops a saveable's transform may run when jaxmeta computes its checkpoint tensors: pure tensor
#: ops, never ones that touch files or state.
_TRANSFORM_OPS = frozenset({
    "Identity", "Const", "Transpose", "Reshape", "ConcatV2", "Concat", "Split", "SplitV", "Slice", "StridedSlice",
    "Mul", "Add", "AddV2", "Sub", "RealDiv", "Cast", "Pack", "Unpack", "Squeeze", "ExpandDims", "Shape", "Fill",
    "ZerosLike", "Rank", "Range", "Size", "CudnnRNNCanonicalToParams", "CudnnRNNCanonicalToParamsV2", "CudnnRNNParamsToCanonical",
    "CudnnRNNParamsToCanonicalV2", "ReadVariableOp", "RefIdentity", "Snapshot",
})


def _computed_from(graph: Graph, ref: TensorRef, sources: frozenset[str]) -> list[TensorRef] | None:
    """The outputs of `sources` ops (restore ops, or variables) that `ref` is computed from through
    `_TRANSFORM_OPS` only, in the order first met; None when anything else feeds it."""
    found: list[TensorRef] = []
    stack, seen = [ref], set()
    while stack:
        current = stack.pop()
        node = graph.get_operation_by_name(current.node)
        if node.type in sources:
            if current not in found:
                found.append(current)
            continue
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.type not in _TRANSFORM_OPS:
            return None
        stack.extend(reversed(node.inputs))
    return found


def _walk_up(graph: Graph, root: str, visit: Callable[[Node], bool]) -> None:
    """Visits `root` and the nodes it reads through data and control inputs, each once, depth
    first; `visit(node)` returns True where the walk goes no further up."""
    stack, seen = [root], set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = graph.get_operation_by_name(name)
        if not visit(node):
            stack.extend(node.control_inputs)
            stack.extend(ref.node for ref in node.inputs)


def _check_arity(node: Node, where: str) -> None:
    need = 2 if node.type in ("Restore", "Save") else 3
    if len(node.inputs) < need:
        raise GraphError(f"{where}: a {node.type} node needs at least {need} inputs, it has {len(node.inputs)}")


def _spec_from_restore(
    graph: Graph, node: Node, index: int, variable: str, keys: dict[str, tuple[list[str], list[str], list[int]]]
) -> SaveSpec:
    where = f"restore node {node.name!r}"
    if node.name not in keys:
        _check_arity(node, where)
        names = _const_strings(graph, node.inputs[1], where)
        slices = _const_strings(graph, node.inputs[2], where) if node.type != "Restore" else [""]
        dtypes = node.attr_dtypes("dtypes") if node.type == "RestoreV2" else [node.attr_dtype_enum("dt")]
        keys[node.name] = names, slices, dtypes
    names, slices, dtypes = keys[node.name]
    if node.type == "RestoreV2":
        if not index < len(names) == len(slices):
            raise GraphError(f"{where}: output {index} has no tensor name")
        return SaveSpec(names[index], variable, slices[index], dtypes[index] if index < len(dtypes) else 0)
    return SaveSpec(names[0], variable, slices[0], dtypes[0])


def _save_specs(graph: Graph, save_tensor_name: str) -> list[SaveSpec]:
    if not save_tensor_name:
        return []
    try:
        root = graph.get_operation_by_name(TensorRef.parse(save_tensor_name).node)
    except (GraphError, KeyError):
        return []
    specs: list[SaveSpec] = []

    def visit(node: Node) -> bool:
        if node.type in _SAVE_OPS:
            specs.extend(_specs_from_save(graph, node))
            return True
        return node.type in VARIABLE_OPS or node.type == "Const"

    _walk_up(graph, root.name, visit)
    specs.sort(key=lambda s: (s.variable, s.key))
    return specs


def _specs_from_save(graph: Graph, node: Node) -> list[SaveSpec]:
    where = f"save node {node.name!r}"
    _check_arity(node, where)
    names = _const_strings(graph, node.inputs[1], where)
    if node.type == "Save":
        slices, data, dtypes = [""] * len(names), node.inputs[2:], node.attr_dtypes("T")
    else:
        slices = _const_strings(graph, node.inputs[2], where)
        data = node.inputs[3:]
        dtypes = node.attr_dtypes("dtypes" if node.type == "SaveV2" else "T")
    specs = []
    unknown = []
    for key, spec, ref, dtype in zip(names, slices, data, dtypes):
        source, index = _forwarded(graph, ref)
        found = _resource_behind(graph, source, "save_ops")
        if found is not None and index < len(found[0].parts):
            kind, resource = found
            specs.append(SaveSpec(key, resource.name, spec, dtype, kind.parts[index]))
            continue
        var = _variable_of(graph, ref)
        if var is None:
            sources = _computed_from(graph, ref, VARIABLE_OPS)
            if not sources:
                unknown.append(f"{key!r} (from {ref})")
                continue
            specs.append(SaveSpec(key, sources[0].node, spec, dtype, computed=str(ref)))
            continue
        specs.append(SaveSpec(key, var.name, spec, dtype))
    if unknown:
        raise GraphError(
            f"{where} saves tensors that are not variables: {', '.join(unknown)}; jaxmeta can only save "
            "variables, mutable lookup tables and boosted-trees ensembles (other saveables are not supported)"
        )
    return specs
