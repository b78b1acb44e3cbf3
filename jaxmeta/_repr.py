"""Notebook views: one-line `__repr__`s and small HTML tables for Graph, Tensor, Node and Session.

Jupyter calls `_repr_html_`; every string taken from the graph (names, op types, devices,
collection keys) is HTML-escaped, since graphs come from files of unknown origin.
"""

from __future__ import annotations

import html
import warnings
from typing import Any

_TOP_OPS = 10
_MAX_VARIABLES = 50

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th style='text-align:left;padding:0 8px'>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:0 8px'>{_e(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table style="{_STYLE}"><tr>{head}</tr>{body}</table>'


def _section(title: str, content: str) -> str:
    return f"<details open><summary><b>{_e(title)}</b></summary>{content}</details>"


def _shape(shape: Any) -> str:
    if shape is None:
        return "<unknown>"
    return (
        "("
        + ", ".join("?" if d is None or d < 0 else str(d) for d in shape)
        + ("," if len(shape) == 1 else "")
        + ")"
    )


def collection_kind(items: list[Any]) -> str:
    """What a collection holds, in words: `tensor`, `operation`, `variable`, `bytes`, `int`, ..."""
    from jaxmeta._graph import Node, Tensor, Variable

    kinds = []
    for item in items:
        if isinstance(item, Variable):
            kind = "variable"
        elif isinstance(item, Tensor):
            kind = "tensor"
        elif isinstance(item, Node):
            kind = "operation"
        elif isinstance(item, bool):
            kind = "bool"
        else:
            kind = type(item).__name__
        if kind not in kinds:
            kinds.append(kind)
    return "/".join(kinds) or "empty"


# --- Graph -----------------------------------------------------------------------------------------


def graph_repr(graph: Any) -> str:
    return (
        f"<jaxmeta.Graph {len(graph.nodes)} nodes, {len(graph.global_variables())} variables, "
        f"{len(graph.collections)} collections>"
    )


def graph_html(graph: Any) -> str:
    """Op counts (top 10), collections, variables and the device placement of a graph."""
    parts = [f"<div><b>jaxmeta.Graph</b> &mdash; {len(graph.nodes)} nodes"]
    if graph.sources:
        parts.append(" from " + ", ".join(f"<code>{_e(s)}</code>" for s in graph.sources))
    parts.append("</div>")

    hist = graph.op_histogram()
    rows = [[op, n] for op, n in list(hist.items())[:_TOP_OPS]]
    rest = list(hist.items())[_TOP_OPS:]
    if rest:
        rows.append([f"… {len(rest)} more op types", sum(n for _, n in rest)])
    parts.append(_section(f"Ops ({len(hist)} types)", _table(["op", "count"], rows)))

    if graph.collections:
        rows = [[key, collection_kind(items), len(items)] for key, items in sorted(graph.collections.items())]
        parts.append(_section(f"Collections ({len(rows)})", _table(["key", "kind", "size"], rows)))

    variables = graph.global_variables()
    if variables:
        rows = [_variable_row(v) for v in variables[:_MAX_VARIABLES]]
        if len(variables) > _MAX_VARIABLES:
            rows.append([f"… {len(variables) - _MAX_VARIABLES} more", "", "", "", ""])
        header = ["name", "dtype", "shape", "device", "trainable"]
        parts.append(_section(f"Variables ({len(variables)})", _table(header, rows)))

    placement = _placement_rows(graph)
    if placement:
        parts.append(
            _section("Placement", _table(["device string", "JAX device", "nodes", "note"], placement))
        )
    return "<div class='jaxmeta-graph'>" + "".join(parts) + "</div>"


def _variable_row(var: Any) -> list[Any]:
    try:
        dtype, shape, device, trainable = var.dtype, _shape(var.shape), var.device, var.trainable
    except Exception:  # a VariableDef whose op is missing: show what the collection says
        dtype, shape, device, trainable = "?", "?", "?", var.variable_def.trainable
    return [var.name, dtype, shape, device or "", "yes" if trainable else "no"]


def _placement_rows(graph: Any) -> list[list[Any]]:
    devices = getattr(graph, "devices", None)
    if devices is None or not any(n.device for n in graph.nodes.values()):
        return []
    try:
        with warnings.catch_warnings():  # the table itself shows soft placement; no warning per view
            warnings.simplefilter("ignore")
            table = devices()
    except Exception as exc:  # strict placement that fails: show why instead of breaking the view
        return [["(error)", type(exc).__name__, "", str(exc)]]
    rows = []
    for name, row in table.items():
        note = "soft placement (device missing)" if getattr(row, "fallback", False) else ""
        rule = getattr(row, "rule", None)
        if rule:
            note = (note + "; " if note else "") + f"rule {rule}"
        rows.append([name or "(none)", getattr(row, "device", row), getattr(row, "nodes", ""), note])
    return rows


# --- Tensor and Node -----------------------------------------------------------------------------


def tensor_repr(tensor: Any) -> str:
    dtype = _safe(lambda: tensor.dtype)
    shape = _safe(lambda: tensor.shape)
    text = f"<Tensor {tensor.name!r}"
    if shape is not None:
        text += f" shape={_shape(shape)}"
    if dtype:
        text += f" dtype={dtype}"
    return text + ">"


def tensor_html(tensor: Any) -> str:
    op = _safe(lambda: tensor.op)
    rows = [
        ["name", tensor.name],
        ["op", f"{op.name} ({op.type})" if op is not None else "?"],
        ["dtype", _safe(lambda: tensor.dtype) or "?"],
        ["shape", _shape(_safe(lambda: tensor.shape))],
        ["device", (op.device if op is not None else "") or ""],
    ]
    consumers = _safe(lambda: tensor.graph.consumers(tensor.ref.node)) or []
    rows.append(
        ["consumers", ", ".join(consumers[:5]) + (f" … ({len(consumers)})" if len(consumers) > 5 else "")]
    )
    return "<div class='jaxmeta-tensor'><b>Tensor</b>" + _table(["", ""], rows) + "</div>"


def node_repr(node: Any) -> str:
    return f"<Node {node.name!r} type={node.type}" + (f" device={node.device!r}" if node.device else "") + ">"


def node_html(node: Any) -> str:
    rows = [
        ["name", node.name],
        ["type", node.type],
        ["device", node.device or ""],
        ["inputs", ", ".join(str(r) for r in node.inputs)],
        ["control inputs", ", ".join(node.control_inputs)],
        ["outputs", _safe(lambda: node.num_outputs)],
    ]
    attrs = sorted(k for k in node.node_def.attr if not k.startswith("_"))
    if attrs:
        rows.append(["attributes", ", ".join(attrs)])
    return "<div class='jaxmeta-node'><b>Operation</b>" + _table(["", ""], rows) + "</div>"


# --- Session -----------------------------------------------------------------------------------------


def session_repr(sess: Any) -> str:
    state = " (closed)" if getattr(sess, "_closed", False) else ""
    return (
        f"<jaxmeta.Session{state} {len(sess.variables)} variables, "
        f"{len(getattr(sess, '_cache', {}))} compiled signatures, graph of {len(sess.graph.nodes)} nodes>"
    )


def session_html(sess: Any) -> str:
    rows = []
    for name, value in sess.variables.items():
        shape = getattr(value, "shape", ())
        dtype = getattr(value, "dtype", type(value).__name__)
        devices = _safe(lambda v=value: ", ".join(sorted(str(d) for d in v.devices()))) or ""
        rows.append([name, dtype, _shape(shape), devices])
    shown = rows[:_MAX_VARIABLES]
    if len(rows) > _MAX_VARIABLES:
        shown.append([f"… {len(rows) - _MAX_VARIABLES} more", "", "", ""])
    head = f"<div><b>{_e(session_repr(sess))}</b></div>"
    table = _section(f"Variables held ({len(rows)})", _table(["variable", "dtype", "shape", "on"], shown))
    return "<div class='jaxmeta-session'>" + head + table + "</div>"


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None
