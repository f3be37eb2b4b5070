"""routes.yaml text -> plain Python data plus the YAML nodes that say where each value is.

The typed model (`proxy.config.model`) validates plain data; YAML's own problems (syntax,
duplicate keys, merge keys, tags, keys that are not strings, scalars that cannot be read) are
found here, while composing, because only the nodes know them. The nodes are kept so that a
problem the model finds at a field path (`("routes", 3, "weight")`) is reported at its line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

TAG = "tag:yaml.org,2002:"
_STR, _NULL, _MAP, _SEQ, _MERGE = (f"{TAG}{t}" for t in ("str", "null", "map", "seq", "merge"))
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present

Loc = tuple[str | int, ...]


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader whose implicit-tag resolution is memoised per document (its regexes dominate
    composing a 10,000-route file, whose scalars repeat: upstream names, methods, keys)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._tags: dict[str, str] = {}

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            if not implicit[0]:
                return _STR
            tag = self._tags.get(value)
            if tag is None:
                tag = self._tags[value] = super().resolve(kind, value, implicit)
            return tag
        return _SEQ if kind is SequenceNode else _MAP

    # SafeLoader has no path resolvers: skip the bookkeeping composing does for them per node
    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass


_BOOL = f"{TAG}bool"
_WORDS = frozenset({"on", "off", "yes", "no", "y", "n"})


def key_text(node: Node) -> str | None:
    """A mapping key's name, or None when it is not a string. YAML 1.1 reads a plain `on`,
    `off`, `yes` or `no` as a boolean; as a key it is the word (`fallback_to_legacy: {on:
    [...]}`)."""
    if not isinstance(node, ScalarNode):
        return None
    if node.tag == _STR or (node.tag == _BOOL and node.value.lower() in _WORDS):
        return node.value
    return None


class Unreadable:
    """A scalar YAML could not construct (a bad `!!int`, an unknown tag): the model reports it
    as `expected ...; cannot read ...` with the field's own expectation."""

    __slots__ = ("node",)

    def __init__(self, node: ScalarNode) -> None:
        self.node = node

    def __repr__(self) -> str:
        return f"<unreadable {self.node.value!r}>"


class YamlSyntaxError(Exception):
    """The text is not YAML at all; `line` and `message` say where and why."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def describe(node: Node | None, value: Any = None) -> str:
    """How a value reads in `expected X, got Y`: `string 'x'`, `number 1.50`, `a list`."""
    if node is None:
        return _describe_value(value)
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    tag = node.tag.removeprefix(TAG)
    if tag == "null":
        return "null"
    if tag == "bool":
        return f"boolean {str(value).lower()}" if isinstance(value, bool) else \
            f"boolean {node.value.lower()}"
    if tag in ("int", "float"):
        return f"number {node.value}"
    if tag == "str":
        shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        return f"string {shown!r}"
    return f"{tag} {node.value!r}"


def _describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value if len(value) <= 40 else value[:37] + '...'!r}"
    return repr(value)


class Document:
    """One composed routes.yaml: `data` to validate, `problems` YAML found, lines by field path."""

    def __init__(self, root: Node) -> None:
        self.root = root
        self.problems: list[tuple[int, Loc, str]] = []  # (line, field path, message)
        self._ctor = yaml.constructor.SafeConstructor()
        self._scalars: dict[tuple[str, str], Any] = {}
        self.data = self._value(root, ())

    # -- conversion ---------------------------------------------------------------------------

    def _value(self, node: Node, loc: Loc) -> Any:
        if isinstance(node, ScalarNode):
            if node.tag == _STR:
                return node.value
            return self._scalar(node)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                self.problems.append((line_of(node), loc, f"unsupported YAML tag {node.tag!r} "
                                      "on a list"))
            return [self._value(item, (*loc, i)) for i, item in enumerate(node.value)]
        if node.tag != _MAP:
            self.problems.append((line_of(node), loc, f"unsupported YAML tag {node.tag!r} on "
                                  "a mapping"))
        out: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self.problems.append((line_of(key_node), loc, "YAML merge keys (<<) are not "
                                      "supported; write the keys out"))
                continue
            key = key_text(key_node)
            if key is None:
                value = self._scalar(key_node) if isinstance(key_node, ScalarNode) else None
                self.problems.append((line_of(key_node), loc, "keys must be strings, got "
                                      f"{describe(key_node, value)}"))
                continue
            if key in out:
                self.problems.append((line_of(key_node), (*loc, key), f"duplicate key '{key}' "
                                      f"(first at line {lines[key]})"))
                continue
            lines[key] = line_of(key_node)
            out[key] = self._value(value_node, (*loc, key))
        return out

    def _scalar(self, node: ScalarNode) -> Any:
        key = (node.tag, node.value)
        try:
            return self._scalars[key]
        except KeyError:
            pass
        try:
            value = self._ctor.construct_object(node, deep=True)
        except Exception:  # third-party constructor on arbitrary input: any failure = unreadable
            self._ctor = yaml.constructor.SafeConstructor()
            return Unreadable(node)
        if isinstance(value, str | int | float | bool) or value is None:
            self._scalars[key] = value
        return value

    # -- where things are ----------------------------------------------------------------------

    def node(self, loc: Loc) -> tuple[Node | None, int]:
        """The node at `loc` (None when absent) and the line a problem there is reported at:
        a mapping value's key line, a list item's own line, else the nearest parent's."""
        node: Node = self.root
        line = line_of(node)
        for part in loc:
            if isinstance(node, MappingNode) and isinstance(part, str):
                for key_node, value_node in node.value:
                    if key_text(key_node) == part:
                        node, line = value_node, line_of(key_node)
                        break
                else:
                    return None, line
            elif isinstance(node, SequenceNode) and isinstance(part, int) \
                    and 0 <= part < len(node.value):
                node = node.value[part]
                line = line_of(node)
            else:
                return None, line
        return node, line

    def line(self, loc: Loc) -> int:
        return self.node(loc)[1]


def compose(text: str) -> Node | None:
    """The YAML node tree of `text` (None for an empty document); YamlSyntaxError otherwise."""
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        message = exc.problem or "invalid YAML"
        if exc.context:
            ctx_line = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
            message = f"{message} ({exc.context}{ctx_line})"
        raise YamlSyntaxError(line, f"invalid YAML: {message}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(0, exc.position)) + 1
        reason = f"invalid YAML: {exc.reason}"
        if isinstance(exc.character, int):
            reason += f" (character #x{exc.character:04x})"
        raise YamlSyntaxError(line, reason) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(1, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YamlSyntaxError(1, "invalid YAML: nested too deeply") from None


def path_text(loc: Loc) -> str:
    """`("routes", 0, "shadow", "sample")` -> `routes[0].shadow.sample`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
