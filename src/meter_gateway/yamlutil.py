"""YAML loading that remembers the line of every key, so errors can name file:line."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

Path_ = tuple[Any, ...]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: same documents, much faster


class LineLoader:
    """Parse YAML into plain Python objects plus a map {key path: line number (1-based)}."""

    @staticmethod
    def load(text: str) -> tuple[Any, dict[Path_, int]]:
        """Return (document, lines) for a YAML text; duplicate keys are an error."""
        node = yaml.compose(text, Loader=_LOADER)
        lines: dict[Path_, int] = {}
        if node is None:
            return None, lines
        LineLoader._walk(node, (), lines)
        return _construct(node), lines

    @staticmethod
    def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for knode, vnode in node.value:
                key = (
                    yaml.safe_load(yaml.serialize(knode)) if not isinstance(knode, yaml.ScalarNode) else _scalar(knode)
                )
                line = knode.start_mark.line + 1
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen[key]})", knode.start_mark
                    )
                seen[key] = line
                lines[(*path, key)] = line
                LineLoader._walk(vnode, (*path, key), lines)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                LineLoader._walk(item, (*path, i), lines)


_TAG = "tag:yaml.org,2002:"
_SC = yaml.constructor.SafeConstructor()  # its scalar methods keep no state: shared
_SCALARS = {
    f"{_TAG}str": lambda n: n.value,
    f"{_TAG}int": _SC.construct_yaml_int,
    f"{_TAG}float": _SC.construct_yaml_float,
    f"{_TAG}bool": _SC.construct_yaml_bool,
    f"{_TAG}null": _SC.construct_yaml_null,
}


class _Unusual(Exception):
    """A node the fast path leaves to PyYAML (merge keys, timestamps, sets, binary, complex keys...)."""


def _construct(node: yaml.Node) -> Any:
    # tags are resolved by compose(): build the objects from the nodes instead of parsing the text again; plain
    # mappings, sequences and scalars directly (PyYAML's generic constructor is most of a profile's load time),
    # any other document through SafeConstructor, so the result is the same either way
    try:
        return _build(node, {})
    except _Unusual:
        return yaml.constructor.SafeConstructor().construct_document(node)


def _build(node: yaml.Node, memo: dict[int, Any]) -> Any:
    if isinstance(node, yaml.ScalarNode):
        make = _SCALARS.get(node.tag)
        if make is None:
            raise _Unusual(node.tag)
        return make(node)
    done = memo.get(id(node))  # an alias: the same object, as SafeConstructor gives
    if done is not None:
        return done
    if isinstance(node, yaml.MappingNode) and node.tag == f"{_TAG}map":
        out: dict[Any, Any] = {}
        memo[id(node)] = out
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise _Unusual("complex key")
            out[_build(knode, memo)] = _build(vnode, memo)
        return out
    if isinstance(node, yaml.SequenceNode) and node.tag == f"{_TAG}seq":
        items: list[Any] = []
        memo[id(node)] = items
        items.extend(_build(item, memo) for item in node.value)
        return items
    raise _Unusual(node.tag)


def _scalar(node: yaml.ScalarNode) -> Any:
    make = _SCALARS.get(node.tag)
    return make(node) if make is not None else yaml.constructor.SafeConstructor().construct_document(node)


def line_of(lines: dict[Path_, int], loc: Path_) -> int:
    """The line of the deepest known prefix of `loc`."""
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get((), 1)


def format_validation_error(exc: ValidationError, source: str, lines: dict[Path_, int]) -> str:
    """Render a pydantic error as 'file:line: path: message' lines.

    A validator may start its message with '@dotted.key.path: ' to point at the key it is about.
    """
    out = []
    for err in exc.errors():
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-after")))
        # pydantic adds union/tag names to loc: keep the steps that follow the document's own paths
        clean: Path_ = ()
        for x in loc:
            if (*clean, x) in lines:
                clean = (*clean, x)
        if err["type"] == "missing" and loc:
            clean = (*clean, loc[-1])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tag = str((err.get("ctx") or {}).get("discriminator", "type")).strip("'")
            if (*clean, tag) in lines:
                clean = (*clean, tag)
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if msg.startswith("@"):
            # a model validator names the key it is about: "@points.Energy_Total: message"
            path, _, msg = msg[1:].partition(": ")
            clean = clean + tuple(int(x) if x.isdigit() else x for x in path.split("."))
        line = line_of(lines, clean)
        where = ".".join(str(x) for x in clean) or "(top level)"
        msg = _plain(err, msg)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}: remove it or check its spelling"
        elif err["type"] == "union_tag_not_found":
            tag = (err.get("ctx") or {}).get("discriminator", "type").strip("'")
            msg = f"missing `{tag}:`; {_TAG_HINT.get(tag, 'add it')}"
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx") or {}
            tag = str(ctx.get("discriminator", "type")).strip("'")
            msg = f"unknown {tag} {ctx.get('tag')!r}; {_TAG_HINT.get(tag, 'use ' + str(ctx.get('expected_tags')))}"
        elif err["type"] == "missing":
            msg = f"missing required key {loc[-1]!r}"
        out.append(f"{source}:{line}: {where}: {msg}")
    return "\n".join(out)


def _plain(err: Any, msg: str) -> str:
    """The project's words for pydantic's common complaints (bounds, choices, types, patterns)."""
    t, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if t in bounds:
        words, key = bounds[t]
        return f"must be {words} {ctx.get(key)}, got {got!r}"
    if t in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, got {got!r}"
    if t in ("float_parsing", "float_type"):
        return f"must be a number, got {got!r}"
    if t in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {got!r}"
    if t == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if t == "string_too_short":
        return "must not be empty"
    if t == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if t == "string_pattern_mismatch":
        extra = "'_', '-' and '.'" if "." in str(ctx.get("pattern", "")) else "'_' and '-'"
        return f"{got!r} may only hold letters, digits, {extra} (no spaces)"
    if t in ("string_type", "list_type", "dict_type", "model_type"):
        kind = {"string_type": "text", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping"}[t]
        return f"must be {kind}, got {got!r}"
    return msg


_TAG_HINT = {"type": "a bus is `type: modbus_rtu`, `type: modbus_tcp` or `type: mbus`"}


class TextEncodingError(ValueError):
    """A YAML file that is not UTF-8; str() names the file, the line and the fix."""


def decode_utf8(data: bytes, source: str) -> str:
    """UTF-8 text of a file (a UTF-8 byte-order mark is accepted); any other encoding is a TextEncodingError."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:200]:
        raise TextEncodingError(f"{source}:1: the file is UTF-16 (or binary), not UTF-8 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start]
        guess = data[exc.start : exc.start + 1].decode("latin-1")
        raise TextEncodingError(
            f"{source}:{line}: byte 0x{byte:02x} is not UTF-8 (Latin-1 {guess!r}?); save the file as UTF-8"
        ) from None
