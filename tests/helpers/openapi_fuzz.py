"""Requests generated from the Matrix spec's OpenAPI definitions (tests/spec/data, unmodified),
for fuzzing: every client-server operation the server implements, with Hypothesis strategies
(hypothesis-jsonschema) for its path parameters, query parameters and JSON body.

Identifiers the schemas mark with a format (``mx-user-id``, ``mx-room-id``, ...) and path
parameters named for one are drawn half from values that exist on the server under test (the
fuzzing user, their room, an event in it), half from the schema, so requests get past the
first "no such room" into the code behind it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from client_api import _MODULES
from tests.helpers.spec import _load

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "data" / "api" / "client-server"

# Keywords that only describe; dropped so that they never reach the schema compiler.
_DESCRIPTIVE = {"description", "title", "example", "examples", "deprecated", "readOnly",
                "writeOnly", "externalDocs", "discriminator", "xml"}
_MAX_REF_DEPTH = 6


def _follow(ref: str, base: Path) -> tuple[Any, Path]:
    file_part, _, pointer = ref.partition("#")
    target_file = (base.parent / file_part).resolve() if file_part else base
    node = _load(target_file)
    for part in [p for p in pointer.split("/") if p]:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node, target_file


def resolve_schema(node: Any, base: Path, depth: int = 0) -> Any:
    """A schema with its ``$ref``s (to other files or within one) inlined, descriptive
    keywords dropped, and ``format`` kept only on strings. Recursive schemas are cut at a
    depth (anything goes below it)."""
    if isinstance(node, list):
        return [resolve_schema(v, base, depth) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        if depth >= _MAX_REF_DEPTH:
            return {}
        target, target_file = _follow(node["$ref"], base)
        return resolve_schema(target, target_file, depth + 1)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DESCRIPTIVE or key.startswith("x-"):
            continue
        if key in ("properties", "patternProperties", "dependentSchemas", "$defs",
                   "definitions") and isinstance(value, dict):
            out[key] = {k: resolve_schema(v, base, depth) for k, v in value.items()}
        else:
            out[key] = resolve_schema(value, base, depth)
    types = out.get("type")
    if "format" in out and types != "string" and not (isinstance(types, list)
                                                        and "string" in types):
        del out["format"]
    return out


@dataclass(frozen=True)
class Operation:
    """One operation of the spec that the server implements."""

    method: str
    base: str  # e.g. /_matrix/client/v3
    template: str  # e.g. /user/{userId}/account_data/{type}
    file: Path
    op: Mapping[str, Any] = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.method} {self.base}{self.template}"

    def parameters(self, where: str) -> list[dict[str, Any]]:
        out = []
        for param in self.op.get("parameters") or []:
            if "$ref" in param:
                param, _ = _follow(param["$ref"], self.file)
            if param.get("in") == where:
                out.append(param)
        return out

    def body_schema(self) -> Any | None:
        body = self.op.get("requestBody")
        if body is None:
            return None
        if "$ref" in body:
            body, _ = _follow(body["$ref"], self.file)
        content = (body.get("content") or {}).get("application/json")
        if content is None:
            return None
        return resolve_schema(content.get("schema") or {}, self.file)


def _normalize(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def _base_path(doc: Mapping[str, Any]) -> str:
    for server in doc.get("servers") or []:
        base = ((server.get("variables") or {}).get("basePath") or {}).get("default")
        if base:
            return str(base)
    return ""


@functools.cache
def implemented_operations() -> tuple[Operation, ...]:
    """The spec's client-server operations that the client API has a route for."""
    routes = {(method, _normalize(path)) for module in _MODULES
              for method, path, _handler in module.routes.entries}
    found = []
    for file in sorted(SPEC_DIR.glob("*.yaml")):
        doc = _load(file)
        base = _base_path(doc)
        for template, ops in (doc.get("paths") or {}).items():
            for method, op in ops.items():
                if method.upper() in ("GET", "PUT", "POST", "DELETE") and \
                        (method.upper(), _normalize(base + template)) in routes:
                    found.append(Operation(method.upper(), base, template, file.resolve(), op))
    return tuple(found)


# -- values -----------------------------------------------------------------------------------


@dataclass
class Known:
    """Things that exist on the server under test, to draw identifiers from."""

    server_name: str
    user_id: str
    other_user_id: str
    device_id: str
    room_id: str
    room_alias: str
    event_id: str
    filter_id: str
    since: str
    fresh_alias: str  # an alias nobody has made (yet)

    def by_format(self) -> dict[str, list[str]]:
        return {
            "mx-user-id": [self.user_id, self.other_user_id, f"@nobody:{self.server_name}",
                           "@someone:elsewhere.example"],
            "mx-room-id": [self.room_id, f"!nowhere:{self.server_name}"],
            "mx-event-id": [self.event_id, "$nothing"],
            "mx-room-alias": [self.room_alias, f"#nowhere:{self.server_name}"],
            "mx-server-name": [self.server_name, "elsewhere.example"],
            "mx-mxc-uri": [f"mxc://{self.server_name}/abcdef", "mxc://elsewhere.example/x"],
            "mx-unpadded-base64": ["YWJj", "AAAA"],
            "mx-urlsafe-unpadded-base64": ["YWJj", "_-_-"],
        }

    def by_parameter(self) -> dict[str, list[str]]:
        formats = self.by_format()
        return {
            "userId": formats["mx-user-id"],
            "roomId": formats["mx-room-id"],
            "roomIdOrAlias": [self.room_id, self.room_alias, f"#nowhere:{self.server_name}"],
            "roomAlias": [self.room_alias, self.fresh_alias],
            "eventId": formats["mx-event-id"],
            "eventType": ["m.room.message", "m.room.topic", "m.room.name", "m.room.member",
                          "m.reaction", "org.example.custom"],
            "stateKey": ["", self.user_id],
            "deviceId": [self.device_id, "NOSUCHDEVICE"],
            "type": ["org.example.fuzz", "m.direct", "m.fully_read", "m.push_rules"],
            "tag": ["u.fuzz", "m.favourite"],
            "filterId": [self.filter_id, "0", "424242"],
            "receiptType": ["m.read", "m.read.private", "m.fully_read"],
            "serverName": formats["mx-server-name"],
            "threadId": ["main", self.event_id],
            "txnId": ["t1", "t2", "a.b~c_d-e"],
            "keyName": ["displayname", "avatar_url", "m.tz", "org.example.key"],
            "kind": ["override", "content", "room", "sender", "underride"],
            "ruleId": [".m.rule.master", ".m.rule.message", "nonexistent"],
            # Query parameters.
            "since": [self.since],
            "from": [self.since, "t1-1"],
            "to": [self.since],
            "filter": [self.filter_id, '{"room":{"timeline":{"limit":1}}}'],
            "server_name": formats["mx-server-name"],
            "via": formats["mx-server-name"],
        }


# Long polls would hold the fuzzer: their timeouts are drawn small.
_SHORT = {"timeout": st.integers(min_value=0, max_value=50)}


def _mixed(values: list[str], generated: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the first known value (the one that gets furthest), then the others, then
    what the schema allows."""
    return st.one_of(st.just(values[0]), st.just(values[0]), st.sampled_from(values),
                     generated)


def _formats(known: Known) -> dict[str, st.SearchStrategy[str]]:
    def mixed(values: list[str], pattern: str) -> st.SearchStrategy[str]:
        return _mixed(values, st.from_regex(pattern, fullmatch=True))
    by_format = known.by_format()
    return {
        "mx-user-id": mixed(by_format["mx-user-id"], r"@[a-z0-9._=/+-]{1,20}:[a-z.]{1,20}"),
        "mx-room-id": mixed(by_format["mx-room-id"], r"![A-Za-z0-9]{1,20}:[a-z.]{1,20}"),
        "mx-event-id": mixed(by_format["mx-event-id"], r"\$[A-Za-z0-9_-]{1,44}"),
        "mx-room-alias": mixed(by_format["mx-room-alias"], r"#[a-z0-9]{1,20}:[a-z.]{1,20}"),
        "mx-server-name": mixed(by_format["mx-server-name"], r"[a-z0-9.-]{1,30}(:[0-9]{1,5})?"),
        "mx-mxc-uri": mixed(by_format["mx-mxc-uri"], r"mxc://[a-z.]{1,20}/[A-Za-z0-9]{1,20}"),
        "mx-unpadded-base64": mixed(by_format["mx-unpadded-base64"], r"[A-Za-z0-9+/]{0,40}"),
        "mx-urlsafe-unpadded-base64": mixed(by_format["mx-urlsafe-unpadded-base64"],
                                            r"[A-Za-z0-9_-]{0,40}"),
    }


def _schema_values(schema: Any, formats: dict[str, st.SearchStrategy[str]]
                   ) -> st.SearchStrategy[Any]:
    try:
        return from_schema(schema, custom_formats=formats)
    except Exception:  # a schema the compiler cannot take: any JSON value instead
        return from_schema({}, custom_formats=formats)


def _as_query(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, list):
        return [v for item in value for v in _as_query(item)]
    if isinstance(value, str):
        return [value]
    return [json.dumps(value)]


@dataclass(frozen=True)
class GeneratedRequest:
    method: str
    path: str  # percent-encoded
    query: list[tuple[str, str]]
    body: Any  # None: no body
    has_body: bool

    def describe(self) -> str:
        return f"{self.method} {self.path} query={self.query!r} body={self.body!r}"


def request_strategy(operation: Operation, known: Known) -> st.SearchStrategy[GeneratedRequest]:
    """Requests for ``operation``: path parameters, some query parameters, a body from its
    schema (or, now and then, any JSON at all)."""
    formats = _formats(known)
    named = known.by_parameter()

    def param_values(param: dict[str, Any]) -> st.SearchStrategy[Any]:
        name = param["name"]
        if name in _SHORT:
            return _SHORT[name]
        schema = resolve_schema(param.get("schema") or {"type": "string"}, operation.file)
        generated = _schema_values(schema, formats)
        if name in named:
            return _mixed(named[name], generated)
        return generated

    path_params = {p["name"]: param_values(p) for p in operation.parameters("path")}
    query_params = [(p["name"], bool(p.get("required")), param_values(p))
                    for p in operation.parameters("query")]
    body_schema = operation.body_schema()
    body: st.SearchStrategy[Any] | None = None
    if body_schema is not None:
        from_spec = _schema_values(body_schema, formats).filter(_encodable)
        body = st.one_of(from_spec, from_spec, from_spec, from_schema({}).filter(_encodable))

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> GeneratedRequest:
        path = operation.base + operation.template
        for name, values in path_params.items():
            value = draw(values)
            text = value if isinstance(value, str) else json.dumps(value)
            path = path.replace("{" + name + "}",
                                quote(text, safe="", errors="surrogatepass"))
        query: list[tuple[str, str]] = []
        for name, required, values in query_params:
            if required or draw(st.booleans()):
                query += [(name, v) for v in _as_query(draw(values))]
        drawn = draw(body) if body is not None else None
        return GeneratedRequest(operation.method, path, query, drawn, body is not None)

    return build()


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError):
        return False
    return True
