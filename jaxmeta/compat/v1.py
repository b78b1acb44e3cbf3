"""`import jaxmeta.compat.v1 as tf`: keep TF1 MetaGraph code with one changed import line.

A thin layer over the native API — a default `Graph`, `Session` holding variables, and `train`
functions that delegate to `import_meta_graph`, `Saver`, `export_meta_graph` and the checkpoint
state helpers. Anything that would need building new TF ops (new layers, new losses, new savers
over different variables) is not emulated: extend an imported graph in JAX instead
(`graph.function(...)` gives a pure function to build on).
"""

from __future__ import annotations

import types
from typing import Any

from jaxmeta import _session
from jaxmeta._graph import Graph

_default_graph = Graph()


class GraphKeys:
    """The standard collection names, as `tf.compat.v1.GraphKeys`."""

    GLOBAL_VARIABLES = "variables"
    VARIABLES = "variables"
    LOCAL_VARIABLES = "local_variables"
    METRIC_VARIABLES = "metric_variables"
    MODEL_VARIABLES = "model_variables"
    TRAINABLE_VARIABLES = "trainable_variables"
    SUMMARIES = "summaries"
    QUEUE_RUNNERS = "queue_runners"
    TABLE_INITIALIZERS = "table_initializer"
    ASSET_FILEPATHS = "asset_filepaths"
    MOVING_AVERAGE_VARIABLES = "moving_average_variables"
    REGULARIZATION_LOSSES = "regularization_losses"
    CONCATENATED_VARIABLES = "concatenated_variables"
    SAVERS = "savers"
    WEIGHTS = "weights"
    BIASES = "biases"
    ACTIVATIONS = "activations"
    UPDATE_OPS = "update_ops"
    LOSSES = "losses"
    SAVEABLE_OBJECTS = "saveable_objects"
    RESOURCES = "resources"
    LOCAL_RESOURCES = "local_resources"
    TRAINABLE_RESOURCE_VARIABLES = "trainable_resource_variables"
    INIT_OP = "init_op"
    LOCAL_INIT_OP = "local_init_op"
    READY_OP = "ready_op"
    READY_FOR_LOCAL_INIT_OP = "ready_for_local_init_op"
    SUMMARY_OP = "summary_op"
    GLOBAL_STEP = "global_step"
    EVAL_STEP = "eval_step"
    TRAIN_OP = "train_op"
    COND_CONTEXT = "cond_context"
    WHILE_CONTEXT = "while_context"


def get_default_graph() -> Graph:
    return _default_graph


def reset_default_graph() -> None:
    """Starts a new, empty default graph (as `tf.compat.v1.reset_default_graph`)."""
    global _default_graph
    _default_graph = Graph()


def get_collection(key: str, scope: str | None = None) -> list[Any]:
    return _default_graph.get_collection(key, scope)


def get_collection_ref(key: str) -> list[Any]:
    return _default_graph.get_collection_ref(key)


def add_to_collection(name: str, value: Any) -> None:
    _default_graph.add_to_collection(name, value)


def global_variables() -> list[Any]:
    return _default_graph.global_variables()


def trainable_variables() -> list[Any]:
    return _default_graph.trainable_variables()


class Session(_session.Session):
    """`tf.compat.v1.Session` over the default graph (or `graph=`), holding the variables.

    The graph may still grow after the session is made (the TF1 idiom imports the MetaGraphDef
    inside `with tf.Session() as sess:`); compiled signatures are dropped when it does.
    """

    def __init__(self, target: str = "", graph: Graph | None = None, config: Any = None, *, seed: int = 0):
        super().__init__(graph if graph is not None else _default_graph, seed=seed)
        self._graph_size = len(self.graph)

    def run(self, fetches: Any, feed_dict: dict[Any, Any] | None = None, options: Any = None, run_metadata: Any = None):
        if len(self.graph) != self._graph_size:
            self._cache.clear()
            self._graph_size = len(self.graph)
        return super().run(fetches, feed_dict)


InteractiveSession = Session


class Saver:
    """`tf.compat.v1.train.Saver` over an imported graph's SaverDef.

    `Saver()` on a graph that already has a SaverDef (an imported MetaGraphDef) uses it; the
    save/restore subgraph is not rebuilt, since jaxmeta runs the graph TF wrote.
    """

    def __init__(self, var_list: Any = None, max_to_keep: int = 5, *, saver_def: Any = None, graph: Graph | None = None, **kwargs: Any):
        from jaxmeta._saver import Saver as NativeSaver

        self._graph = graph if graph is not None else _default_graph
        self._native = NativeSaver(self._graph, saver_def if saver_def is not None else self._graph.saver_def)
        self._max_to_keep = max_to_keep

    @property
    def saver_def(self):
        return self._native.saver_def

    def restore(self, sess: Session, save_path: str) -> None:
        """Restores the checkpoint's variables into the session."""
        sess.variables = self._native.restore(save_path, variables=sess.variables)

    def save(
        self,
        sess: Session,
        save_path: str,
        global_step: Any = None,
        latest_filename: str | None = None,
        meta_graph_suffix: str = "meta",
        write_meta_graph: bool = True,
        **kwargs: Any,
    ) -> str:
        """Saves the session's variables; returns the checkpoint prefix (as TF does)."""
        if global_step is not None and not isinstance(global_step, (int,)):
            global_step = int(sess.run(global_step) if isinstance(global_step, str) else global_step)
        return self._native.save(
            sess.variables,
            save_path,
            global_step=global_step,
            latest_filename=latest_filename or "checkpoint",
            write_meta_graph=write_meta_graph,
        )


def _import_meta_graph(meta_graph_or_file: Any, clear_devices: bool = False, import_scope: str | None = None, **kwargs: Any):
    """Imports into the default graph; returns a Saver, or None when there are no variables."""
    from jaxmeta._import import import_meta_graph

    before = len(_default_graph.global_variables())
    graph = import_meta_graph(
        meta_graph_or_file, clear_devices=clear_devices, import_scope=import_scope, graph=_default_graph, **kwargs
    )
    if len(graph.global_variables()) == before and not graph.variable_nodes():
        return None
    if graph.saver_def is None:
        return None
    return Saver(graph=graph)


def _export_meta_graph(
    filename: str | None = None,
    meta_info_def: Any = None,
    graph_def: Any = None,
    saver_def: Any = None,
    collection_list: Any = None,
    as_text: bool = False,
    graph: Graph | None = None,
    export_scope: str | None = None,
    clear_devices: bool = False,
    **kwargs: Any,
):
    if meta_info_def is not None or graph_def is not None:
        raise NotImplementedError(
            "export_meta_graph(meta_info_def=/graph_def=) is not supported: jaxmeta exports the graph it "
            "imported; edit the returned MetaGraphDef message instead"
        )
    return (graph or _default_graph).export_meta_graph(
        filename,
        collection_list=collection_list,
        as_text=as_text,
        export_scope=export_scope,
        clear_devices=clear_devices,
        saver_def=saver_def,
    )


def _latest_checkpoint(checkpoint_dir: str, latest_filename: str | None = None):
    from jaxmeta.checkpoint import latest_checkpoint

    return latest_checkpoint(checkpoint_dir, latest_filename) if latest_filename else latest_checkpoint(checkpoint_dir)


def _get_checkpoint_state(checkpoint_dir: str, latest_filename: str | None = None):
    from jaxmeta.checkpoint import get_checkpoint_state

    return get_checkpoint_state(checkpoint_dir, latest_filename) if latest_filename else get_checkpoint_state(checkpoint_dir)


train = types.SimpleNamespace(
    import_meta_graph=_import_meta_graph,
    export_meta_graph=_export_meta_graph,
    Saver=Saver,
    latest_checkpoint=_latest_checkpoint,
    get_checkpoint_state=_get_checkpoint_state,
)
train.__doc__ = "The `tf.compat.v1.train` functions jaxmeta provides."
