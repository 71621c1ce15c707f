"""Validating our responses against the Matrix spec's OpenAPI definitions (tests/spec/data,
an unmodified copy of matrix-org/matrix-spec's data files)."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec" / "data" / "api"


# libyaml's parser where PyYAML has it: the same documents, ten times as fast (the client-server
# API's files took a second to read).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _load(path: Path) -> Any:
    """A spec file, read once per process (``tests.helpers.openapi_fuzz`` reads them here too)."""
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)


def _retrieve(uri: str) -> Resource[Any]:
    path = Path(uri.removeprefix("file://"))
    return Resource.from_contents(_load(path), default_specification=DRAFT202012)


@functools.cache
def _registry() -> Registry[Any]:
    return Registry(retrieve=_retrieve)  # type: ignore[call-arg]


def _find_operation(api: str, method: str, path: str) -> tuple[Path, dict[str, Any]]:
    """The spec file and operation for ``method`` ``path`` (e.g. '/login' under client-server)."""
    for file in sorted((SPEC_DIR / api).glob("*.yaml")):
        doc = _load(file)
        for template, ops in (doc.get("paths") or {}).items():
            pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
            if re.match(pattern, path) and method.lower() in ops:
                return file, ops[method.lower()]
    raise LookupError(f"no operation {method} {path} in {api}")


def assert_matches_spec(api: str, method: str, path: str, status: int, body: Any) -> None:
    """Assert ``body`` fits the response schema the spec gives for ``status``.

    Args:
        api: ``client-server`` or ``server-server``.
        path: the path after the API's base (e.g. ``/login`` or ``/account/whoami``).
    """
    file, op = _find_operation(api, method, path)
    assert_matches_operation(file, op, status, body, f"{method} {path}")


def assert_matches_operation(file: Path, op: dict[str, Any], status: int, body: Any,
                             label: str) -> None:
    """Assert ``body`` fits the response schema that operation ``op`` of spec file ``file``
    gives for ``status`` (``label`` names the request in the failure)."""
    response = op["responses"].get(str(status))
    assert response is not None, f"spec has no {status} response for {label}"
    schema = ((response.get("content") or {}).get("application/json") or {}).get("schema")
    if schema is None:
        return
    # Relative $refs in the spec resolve against the file the schema came from, and local ones
    # ("#/components/...") against that file's root, so the root carries its components.
    root = {"$id": f"file://{file}", "components": _load(file).get("components") or {},
            "allOf": [schema]}
    validator = Draft202012Validator(root, registry=_registry())
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{label} {status} does not match the spec: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5])


def request_properties(api: str, method: str, path: str) -> list[str]:
    """The top-level property names of the spec's JSON request body for an operation."""
    _file, op = _find_operation(api, method, path)
    content = ((op.get("requestBody") or {}).get("content") or {}).get("application/json") or {}
    schema = content.get("schema") or {}
    names = list((schema.get("properties") or {}).keys())
    for part in schema.get("allOf", []):
        names += list((part.get("properties") or {}).keys())
    return names
