"""Endpoint templates as people write them: `inventory.templates` in routes.yaml and the paths of
an OpenAPI 3 document (`inventory.openapi`).

A template is a path whose variable parts are `{name}` (a whole segment, `/users/{id}`, or part of
one, `/files/{name}.json`); in routes.yaml it may start with a method (`GET /users/{id}`). The data
plane compiles them (`proxy.dataplane.inventory`); here they are only read and checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.config.checks import TOKEN_RE

_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
OTHER_TEMPLATE = "other"  # every endpoint beyond the inventory's bound (not a path: no '/')


@dataclass(frozen=True, slots=True)
class DeclaredTemplate:
    """One declared endpoint: `method` None means any method (a template from routes.yaml
    without one, or an OpenAPI path item without operations)."""

    method: str | None
    path: str
    source: str  # "routes.yaml:12" or "monolith-openapi.yaml:40": where it was declared


def split_method(text: str) -> tuple[str | None, str]:
    """`"GET /users/{id}"` -> ("GET", "/users/{id}"); a bare path has no method."""
    head, sep, rest = text.strip().partition(" ")
    if sep and not head.startswith("/"):
        return head.upper(), rest.strip()
    return None, text.strip()


def method_problem(method: str) -> str | None:
    return None if TOKEN_RE.match(method) else f"invalid HTTP method {method!r}"


def template_problem(path: str) -> str | None:
    """What is wrong with a path template, or None."""
    if not path.startswith("/"):
        return f"{path!r} must start with '/'"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return f"{path!r} contains a space or a control character"
    if "?" in path or "#" in path:
        return f"{path!r}: a template is a path only (no query or fragment)"
    if "//" in path:
        return f"{path!r} has an empty segment ('//')"
    for segment in path.split("/"):
        rest = segment
        while "{" in rest or "}" in rest:
            start = rest.find("{")
            end = rest.find("}")
            if start < 0 or end < start:
                return f"{path!r}: unbalanced '{{' or '}}' in segment {segment!r}"
            name = rest[start + 1 : end]
            if not _PARAM_NAME.fullmatch(name):
                return (f"{path!r}: parameter {{{name}}} needs a name of letters, digits, '_', "
                        "'.' or '-'")
            rest = rest[end + 1 :]
            if rest.startswith("{"):
                return f"{path!r}: two parameters with nothing between them in {segment!r}"
    return None
