"""The endpoints an OpenAPI 3 document declares (`inventory.openapi`): its `paths`, each with its
operations' methods, as `DeclaredTemplate`s for the traffic inventory.

JSON or YAML (YAML reads both). Only `openapi: 3.x` documents are read (Swagger 2.0 is refused
with a hint), and only what the inventory needs: path templates and the HTTP methods under each;
schemas, parameters and `$ref`s elsewhere are ignored. A path item that is only a `$ref` declares
its path for any method. Problems are reported at their line in the OpenAPI file.
"""

from __future__ import annotations

from pathlib import Path

from proxy.config.document import Document, YamlSyntaxError, compose
from proxy.config.templates import DeclaredTemplate, template_problem

OPERATIONS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_BYTES = 64 * 1024 * 1024  # an OpenAPI document larger than this is refused, not read
MAX_PATHS = 20_000

# (line in the OpenAPI file, field path there, message)
OpenApiProblem = tuple[int, str, str]


def read_openapi(path: Path, prefix: str = "") -> tuple[list[DeclaredTemplate],
                                                         list[OpenApiProblem]]:
    """The endpoints `path` declares, each template prefixed with `prefix` (the path the
    document's server lives under, e.g. `/api/v1`). OSError when it cannot be read."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        return [], [(0, "", f"is {size} bytes; an OpenAPI document over {MAX_BYTES} bytes is "
                           "not read")]
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [(raw[: exc.start].count(b"\n") + 1, "syntax", "not valid UTF-8")]
    try:
        root = compose(text)
    except YamlSyntaxError as exc:
        return [], [(exc.line, "syntax", exc.message.replace("invalid YAML",
                                                             "neither JSON nor YAML"))]
    if root is None:
        return [], [(1, "document", "the document is empty; expected an OpenAPI 3 document")]
    try:
        doc = Document(root)  # its own problems (e.g. `200:` keys) do not matter here
    except RecursionError:
        return [], [(1, "syntax", "nested too deeply")]
    data = doc.data
    if not isinstance(data, dict):
        return [], [(1, "document", "expected an OpenAPI 3 document (a mapping with 'openapi' and "
                            "'paths')")]
    version = data.get("openapi")
    if "swagger" in data and version is None:
        return [], [(doc.line(("swagger",)), "swagger", "Swagger 2.0 is not supported: convert "
                     "the document to OpenAPI 3 (e.g. with swagger2openapi)")]
    if not isinstance(version, str) or not version.startswith("3."):
        return [], [(doc.line(("openapi",)) if "openapi" in data else 1, "openapi",
                     f"expected an OpenAPI 3 document ('openapi: 3.x'), got {version!r}")]
    paths = data.get("paths")
    if paths is None:
        return [], []
    if not isinstance(paths, dict):
        return [], [(doc.line(("paths",)), "paths", "expected a mapping of path templates")]
    if len(paths) > MAX_PATHS:
        return [], [(doc.line(("paths",)), "paths", f"{len(paths)} paths; at most {MAX_PATHS} "
                     "are read")]
    name = path.name
    out: list[DeclaredTemplate] = []
    problems: list[OpenApiProblem] = []
    for template, item in paths.items():
        line = doc.line(("paths", template))
        full = prefix + template if template.startswith("/") else template
        problem = template_problem(full)
        if problem is not None:
            problems.append((line, f"paths.{template}", problem))
            continue
        methods = [m.upper() for m in OPERATIONS if isinstance(item, dict) and m in item]
        if not methods:
            out.append(DeclaredTemplate(None, full, f"{name}:{line}"))
        for method in methods:
            op_line = doc.line(("paths", template, method.lower()))
            out.append(DeclaredTemplate(method, full, f"{name}:{op_line}"))
    return out, problems
