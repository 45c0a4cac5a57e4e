"""Convert a ComfyUI UI-format workflow (what the editor saves) into an API-format prompt, in Python.

The browser test checks this converter against the frontend's own ``app.graphToPrompt`` on every shipped preset;
the demo uses it to run a preset without a browser. Widget values are matched to the node's widget inputs in
``/object_info`` order; the frontend's extra widget values (``control_after_generate`` after seeds, the upload
button after ``LoadImage``'s image) are skipped; widgets a workflow saved before they existed get their defaults,
as in the frontend.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ui_to_api", "WidgetMismatch"]

SOCKETLESS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
SKIP_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


class WidgetMismatch(ValueError):
    """The workflow's widget values do not fit the node's inputs."""


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    if isinstance(kind, list):
        return True
    if kind in SOCKETLESS:
        return not (len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("forceInput"))
    return False


_NO_DEFAULT = object()


def _default(spec: list) -> Any:
    """The default the frontend gives a widget that a saved workflow lacks (its declared default, else a combo's
    first option)."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    options = spec[0] if isinstance(spec[0], list) else opts.get("options")
    if isinstance(options, list) and options:
        return options[0]
    return _NO_DEFAULT


def _widget_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in order.get(section, []):
            spec = specs[name]
            if _is_widget(spec):
                out.append((name, spec))
    return out


def ui_to_api(workflow: dict, object_info: dict[str, Any]) -> dict[str, dict]:
    """API prompt ``{node_id: {"class_type", "inputs"}}`` for a UI workflow, using the server's object_info."""
    links = {l[0]: l for l in workflow.get("links", [])}
    nodes = {n["id"]: n for n in workflow["nodes"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        ctype = node["type"]
        if ctype in SKIP_TYPES or node.get("mode", 0) in (2, 4):  # 2 muted, 4 bypassed
            continue
        if ctype not in object_info:
            raise WidgetMismatch(f"node {node['id']}: type {ctype!r} is not installed on the server")
        info = object_info[ctype]
        inputs: dict[str, Any] = {}
        linked = {}
        for inp in node.get("inputs", []) or []:
            if inp.get("link") is not None:
                link = links[inp["link"]]
                src = nodes.get(link[1])
                if src is not None and src.get("mode", 0) == 4:
                    raise WidgetMismatch(f"node {node['id']}: input {inp['name']} comes from a bypassed node")
                linked[inp["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):  # some nodes save a dict
            for name, _spec in _widget_inputs(info):
                if name in node["widgets_values"]:
                    inputs[name] = node["widgets_values"][name]
            values = []
        i = 0
        for name, spec in _widget_inputs(info):
            if i >= len(values):
                # a workflow saved before the node gained this widget (appended inputs): the frontend gives it
                # its default, so does this converter
                default = _default(spec)
                if default is not _NO_DEFAULT and name not in inputs:
                    inputs[name] = default
                continue
            value = values[i]
            i += 1
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            inputs[name] = value
            if i < len(values) and spec[0] == "INT" and values[i] in CONTROL_VALUES and (
                opts.get("control_after_generate") or name in ("seed", "noise_seed")
            ):
                i += 1
            elif i < len(values) and opts.get("image_upload") and values[i] == "image":
                i += 1
        inputs.update(linked)
        prompt[str(node["id"])] = {"class_type": ctype, "inputs": inputs}
    return prompt
