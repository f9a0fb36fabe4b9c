"""routes.yaml's JSON Schema (draft 2020-12), made from the authoring models.

Editors with ``yaml-language-server`` validate and complete routes.yaml from it (the
shipped file's first line names ``schema/routes.schema.json``); ``router schema``
prints it. It is pydantic's schema of :class:`~image_router.config.schema.RoutesFile`, so it
cannot drift from what the loader validates, changed only where the loader accepts
more than the models see, or where an editor needs more than pydantic writes:

- ``${VAR}``: :mod:`image_router.config.source` expands ``${VAR}`` and ``${VAR:-default}``
  in *every* string scalar of the file, keys included, before validation, and pydantic
  (lax) then turns ``"8001"`` into a port and ``"true"`` into a flag. So wherever a
  string holding a reference could validate once expanded — a number, a boolean, a
  string enum, a string with a pattern — a string with a ``${...}`` in it is allowed
  too (:data:`ENV_REFERENCE`). An integer constant (``version: 1``) is not: pydantic
  refuses ``"1"`` there.
- ``tenants: {file: tenants.yaml}`` is replaced by that file's contents before
  validation (:func:`image_router.config.compile._tenants_file`).
- A backend's ``type`` picks its model, and defaults to ``triton``: pydantic's
  ``oneOf`` becomes ``if``/``then``/``else`` on ``type``, so an error names the wrong
  field rather than "matches none of two schemas".
- Names of models, backends, tenants, … are validated as keys (``propertyNames``);
  pydantic's ``patternProperties`` would let a bad name through unchecked.
- Descriptions are the models' docstrings and fields' descriptions with the RST roles
  and double backticks turned into Markdown's single ones; fields' generated titles
  ("Grpc Port") are dropped, as they only repeat the key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from image_router.config.schema import RoutesFile

__all__ = ["DIALECT", "ENV_REFERENCE", "routes_schema", "routes_schema_text"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENV_REFERENCE: dict[str, Any] = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": "`${VAR}` or `${VAR:-default}`: an environment variable routes.yaml may read (those always "
    "allowed, `ROUTER_CONFIG_ENV`'s, or one listed under `env:`), expanded when the file is loaded.",
}
_ENV_REF = {"$ref": "#/$defs/EnvReference"}
_TENANTS_FILE: dict[str, Any] = {
    "type": "object",
    "description": "The `tenants:` block in a file of its own, watched and reloaded with routes.yaml; relative "
    "to routes.yaml, under `secret_dirs`.",
    "properties": {"file": {"type": "string", "minLength": 1, "description": "The tenants file's path."}},
    "required": ["file"],
    "additionalProperties": False,
}
_ANNOTATIONS = ("title", "description", "default", "examples")
_ONE = ("items", "additionalProperties", "propertyNames", "not", "contains", "if", "then", "else")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_NAMED = ("properties", "patternProperties", "$defs")
_RST_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc):`~?([^`]+)`")


def routes_schema() -> dict[str, Any]:
    """The JSON Schema of routes.yaml, as a dict (see the module's docstring)."""
    raw = RoutesFile.model_json_schema(mode="validation")
    defs = raw.pop("$defs")
    for name, model in defs.items():
        defs[name] = _walk(model, _drop_title)
        defs[name]["title"] = name
    body = _walk(raw, _drop_title)
    defs, body = _walk(defs, _keys_checked, named=True), _walk(body, _keys_checked)
    defs, body = _walk(defs, _env_allowed, named=True), _walk(body, _env_allowed)
    defs, body = _walk(defs, _backend_by_type, named=True), _walk(body, _backend_by_type)
    body["properties"]["tenants"]["anyOf"].insert(1, {"$ref": "#/$defs/TenantsFile"})
    defs["EnvReference"] = dict(ENV_REFERENCE)
    defs["TenantsFile"] = _TENANTS_FILE
    out = {"$schema": DIALECT, **body, "title": "routes.yaml", "$defs": dict(sorted(defs.items()))}
    described: dict[str, Any] = _walk(out, _markdown)
    return described


def routes_schema_text() -> str:
    """What ``router schema`` prints and ``schema/routes.schema.json`` holds."""
    return json.dumps(routes_schema(), indent=2, ensure_ascii=False) + "\n"


def _walk(node: Any, fix: Callable[[dict[str, Any]], dict[str, Any]], named: bool = False) -> Any:
    """``fix`` applied to every subschema of ``node``, innermost first (``named``:
    ``node`` is a map of names to schemas, as ``$defs`` is)."""
    if named:
        return {key: _walk(value, fix) for key, value in node.items()}
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = _walk(out[key], fix)
    for key in _MANY:
        if key in out:
            out[key] = [_walk(item, fix) for item in out[key]]
    for key in _NAMED:
        if key in out:
            out[key] = _walk(out[key], fix, named=True)
    return fix(out)


def _drop_title(node: dict[str, Any]) -> dict[str, Any]:
    node.pop("title", None)
    return node


def _keys_checked(node: dict[str, Any]) -> dict[str, Any]:
    """``patternProperties: {P: V}`` → ``additionalProperties: V`` with ``P`` on the
    keys: a key that does not match is an error, as it is to pydantic."""
    patterns = node.get("patternProperties")
    if not isinstance(patterns, dict) or len(patterns) != 1 or "properties" in node:
        return node
    ((pattern, value),) = patterns.items()
    del node["patternProperties"]
    node["additionalProperties"] = value
    node["propertyNames"] = {"type": "string", **node.get("propertyNames", {}), "pattern": pattern}
    return node


def _backend_by_type(node: dict[str, Any]) -> dict[str, Any]:
    """A backend is an ``openai`` one when its ``type`` says so, else a Triton one
    (the models' discriminator, ``image_router.config.schema._backend_type``)."""
    triton, openai = {"$ref": "#/$defs/TritonBackendSpec"}, {"$ref": "#/$defs/OpenAIBackendSpec"}
    if node.get("oneOf") not in ([triton, openai], [openai, triton]):
        return node
    del node["oneOf"]
    choice = {"properties": {"type": {"const": "openai"}}, "required": ["type"]}
    return {**node, "if": choice, "then": openai, "else": triton}


def _takes_env(node: dict[str, Any]) -> bool:
    """Whether a string holding ``${VAR}`` could validate here once expanded."""
    if any(key in node for key in ("$ref", "anyOf", "oneOf", "allOf", "if")):
        return False
    if "const" in node or "enum" in node:
        values = node.get("enum", [node.get("const")])
        return all(isinstance(value, str) for value in values)
    kind = node.get("type")
    return kind in ("integer", "number", "boolean") or (kind == "string" and "pattern" in node)


def _env_allowed(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` or a string holding ``${VAR}``; an optional field's ``anyOf`` stays flat."""
    if _takes_env(node):
        outer = {key: node.pop(key) for key in _ANNOTATIONS if key in node}
        return {**outer, "anyOf": [node, _ENV_REF]}
    if "anyOf" in node:
        flat = [
            inner for choice in node["anyOf"] for inner in (choice["anyOf"] if set(choice) == {"anyOf"} else [choice])
        ]
        node["anyOf"] = flat
    return node


def _markdown(node: dict[str, Any]) -> dict[str, Any]:
    """RST roles and double backticks → Markdown; a docstring's wrapped lines joined."""
    text = node.get("description")
    if isinstance(text, str):
        text = _RST_ROLE.sub(r"`\1`", text).replace("``", "`")
        node["description"] = re.sub(r"(?<!\n)\n(?!\n)", " ", text)
    return node
