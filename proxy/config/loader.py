"""routes.yaml -> frozen `proxy.config.spec.Config`, or every problem in the file at once.

Three steps: the text is composed with PyYAML (`proxy.config.document`: plain data, YAML's own
problems, and the nodes that know each value's line); the data is validated by the typed model
(`proxy.config.model`, pydantic), which collects every problem with its field path; a valid model
becomes the frozen specs (`proxy.config.build`). Each problem is a `Problem(file, line, path,
message)`; `load_config` raises `ConfigError` carrying all of them, sorted by line, so
`strangler validate` and a rejected reload can show the whole list.

    ConfigError(Exception)      .problems: tuple[Problem, ...]
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from proxy.config import build
from proxy.config.crosscheck import across
from proxy.config.document import Document, YamlSyntaxError, compose, describe, path_text
from proxy.config.model import RoutesFile, bad_locs, block_at, blocks
from proxy.config.spec import Config
from proxy.config.values import LINE, at, parse_host_port, unknown_key

__all__ = [
    "ConfigError",
    "Problem",
    "format_problems",
    "load_config",
    "parse_host_port",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the file, at the line of the offending key (or value)."""

    file: str
    line: int
    path: str  # field path, e.g. routes[0].shadow.sample
    message: str

    def __str__(self) -> str:
        if self.line <= 0 and not self.path:  # the file as a whole (unreadable)
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


def format_problems(problems: Iterable[Problem]) -> str:
    """One problem per line, as `strangler validate` prints them."""
    return "\n".join(str(p) for p in problems)


class ConfigError(Exception):
    """The file is not a valid routes.yaml; `problems` lists everything wrong with it."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda p: p.line))
        super().__init__(format_problems(self.problems))

    def __str__(self) -> str:
        return format_problems(self.problems)


def load_config(path: str | Path, text: str | None = None) -> Config:
    """Parse and validate routes.yaml; `text` replaces reading `path` (which still names it).

    Raises ConfigError with every problem found. `state_dir` is resolved against the file's
    directory (against the working directory when `text` is given and `path` is not a real file).
    """
    file = str(path)
    source = Path(path)
    if text is None:
        try:
            text = source.read_bytes().decode("utf-8-sig")
        except FileNotFoundError:
            raise ConfigError([Problem(file, 0, "", "no such file")]) from None
        except IsADirectoryError:
            raise ConfigError([Problem(file, 0, "", "is a directory, not a file")]) from None
        except OSError as exc:
            raise ConfigError([Problem(file, 0, "", f"cannot read: {exc.strerror}")]) from None
        except UnicodeDecodeError as exc:
            line = exc.object[: exc.start].count(b"\n") + 1
            raise ConfigError([Problem(file, line, "syntax", "not valid UTF-8")]) from None
        base = source.absolute().parent
    else:
        base = source.absolute().parent if source.is_file() else Path.cwd()
    # Composing allocates a node per scalar and no garbage; the cyclic GC would rescan the
    # growing tree over and over (5x the parse time for 10,000 routes), so it waits until the end.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(file, text, source, base)
    finally:
        if gc_was_enabled:
            gc.enable()


def _load(file: str, text: str, source: Path, base: Path) -> Config:
    try:
        root = compose(text)
    except YamlSyntaxError as exc:
        raise ConfigError([Problem(file, exc.line, "syntax", exc.message)]) from None
    if root is None:
        raise ConfigError([Problem(file, 1, "", "the file is empty; expected a mapping "
                                   "starting with 'version: 1'")])
    try:
        doc = Document(root)
    except RecursionError:
        raise ConfigError([Problem(file, 1, "syntax", "invalid YAML: nested too deeply")]) \
            from None
    problems = [Problem(file, max(1, line), path_text(loc), message)
                for line, loc, message in doc.problems]
    model: RoutesFile | None = None
    errors: list[Any] = []
    try:
        model = RoutesFile.model_validate(doc.data)
    except ValidationError as exc:
        errors = exc.errors()
    if isinstance(doc.data, dict):
        found = across(doc.data, bad_locs(errors), model, quiet=bool(problems))
        if found:
            try:
                at(found)
            except ValidationError as exc:
                errors += exc.errors()
    problems += _translate(file, doc, errors)
    if problems or model is None:
        raise ConfigError(problems)
    config = build.config(model, doc, source, base)
    problems = _consumed(file, config) + _tls_files(file, doc, config)
    config, more = _openapi(file, doc, config, base)
    problems += more
    if problems:
        raise ConfigError(problems)
    return config


def _openapi(file: str, doc: Document, config: Config, base: Path) -> tuple[Config, list[Problem]]:
    """`inventory.openapi`: the document's endpoints join the declared templates; a document
    that cannot be read is a problem at the key's line, one with problems at their own lines."""
    import dataclasses

    from proxy.config.openapi import read_openapi

    inv = config.inventory
    if inv.openapi is None:
        return config, []
    path = base / Path(inv.openapi).expanduser()
    try:
        found, issues = read_openapi(path, inv.openapi_prefix or "")
    except OSError as exc:
        return config, [Problem(file, doc.line(("inventory", "openapi")), "inventory.openapi",
                                f"cannot read {inv.openapi}: {exc.strerror or exc}")]
    if issues:
        return config, [Problem(str(path), line, where, message) for line, where, message in issues]
    inventory = dataclasses.replace(inv, declared=(*inv.declared, *found))
    return dataclasses.replace(config, inventory=inventory), []


def _translate(file: str, doc: Document, errors: list[dict[str, Any]]) -> list[Problem]:
    """The model's errors as problems at their lines, in the words of the rest of the file."""
    out = []
    names = blocks()
    for e in errors:
        loc = tuple(e["loc"])
        kind, ctx = e["type"], e.get("ctx") or {}
        node, line = doc.node(loc)
        if kind == "expected":
            message = f"{ctx['m']}, got {describe(node, e.get('input'))}"
        elif kind == "problem":
            message = ctx["m"]
            if "line_of" in ctx:
                base = loc[: len(loc) - ctx.get("depth", 0)]
                where = doc.line((*base, *ctx["line_of"]))
                if LINE in message:
                    message = message.replace(LINE, str(where))
                else:
                    line = where
        elif kind == "missing":
            parent = loc[:-1]
            block = block_at(parent)
            hint = block.HINTS.get(str(loc[-1]), "") if block else ""
            message, line = f"missing required key '{loc[-1]}'{hint}", doc.line(parent)
        elif kind == "extra_forbidden":
            block = block_at(loc[:-1])
            allowed = list(block.model_fields) if block else []
            message = unknown_key(str(loc[-1]), allowed)
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            block = names.get(ctx.get("class_name", "")) or block_at(loc)
            what = block.WHAT if block else "a mapping"
            message = f"expected {what}, got {describe(node, e.get('input'))}"
        elif kind == "version":
            raw = getattr(node, "value", e.get("input"))
            message = f"unsupported version {raw!r}: only version 1 exists"
        else:
            message = str(e.get("msg"))
        out.append(Problem(file, max(1, line), path_text(loc), message))
    return out


def _tls_files(file: str, doc: Document, config: Config) -> list[Problem]:
    """Certificate, key and CA files that cannot be used (missing, unreadable, not PEM, a key
    that does not match its certificate), at the line of the key that names them."""
    from proxy.config.tls import file_problems

    blocks: list[tuple[tuple[str, ...], Any]] = [
        (("tls",), config.tls), (("admin", "tls"), config.admin.tls),
        (("gate", "tls"), config.gate.tls),
        (("tracing", "tls"), config.tracing.tls if config.tracing else None),
        (("flags", "unleash", "tls"), config.flags.unleash.tls if config.flags.unleash else None),
        *((("upstreams", name, "tls"), up.tls) for name, up in config.upstreams.items())]
    out = []
    for loc, spec in blocks:
        if spec is None:
            continue
        for field, message in file_problems(spec):
            where = (*loc, field)
            out.append(Problem(file, doc.line(where), path_text(where), message))
    return out


def _consumed(file: str, config: Config) -> list[Problem]:
    """The pin and secret headers are consumed on every route: none may be a header another
    route needs forwarded or keys its split on (a sticky header)."""
    trust = config.overrides
    if trust is None:
        return []
    out = []
    routes = config.routes
    sticky = {r.sticky.header: r for r in routes if r.sticky is not None and r.sticky.header}
    if trust.secret_header in sticky:
        other = sticky[trust.secret_header]
        out.append(Problem(file, trust.line, "overrides.trusted.secret_header", f"'"
                           f"{trust.secret_header}' is route '{other.name}''s sticky header; "
                           "the proxy never forwards the secret header, so that route's "
                           "upstream would not see it"))
    for i, r in enumerate(routes):
        if r.override is None:
            continue
        other = sticky.get(r.override.header)
        if other is not None and other is not r:
            out.append(Problem(file, r.override.line, f"routes[{i}].override", f"'"
                               f"{r.override.header}' is route '{other.name}''s sticky header; "
                               "the proxy never forwards a pin header, on any route, so that "
                               "route's upstream would not see it"))
    return out


