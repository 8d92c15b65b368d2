"""Load YAML the way an admin reads it, with line numbers for every error.

PyYAML's ``safe_load`` speaks YAML 1.1: ``yes``/``no``/``on``/``off`` become booleans, ``22:30``
becomes 1350, ``0755`` becomes 493, and a duplicated key silently wins (shared/TRAPS.md). In a
rule file each of those is a quiet misreading, so this loader resolves only ``true``/``false`` as
booleans, decimal digits as integers, plain decimals as floats (``2024-01-01`` stays text), and
treats a duplicate key as an error. Every mapping remembers the line of each key, so errors can
say ``file:line``.

Whatever is wrong with a file is a :class:`YamlError` with its line, never another exception
(issue 10: a control byte gave a ``yaml.reader.ReaderError`` traceback). PyYAML's exceptions,
checked one by one in PyYAML 6.0: the scanner, parser, composer and constructor raise
``MarkedYAMLError`` subclasses, which carry a line; ``ReaderError`` (a character YAML forbids:
C0 and C1 controls but tab/LF/CR/NEL, DEL, U+FFFE/U+FFFF) carries a character offset, which
becomes a line here; ``EmitterError``, ``SerializerError`` and ``RepresenterError`` are for
writing YAML, which we never do. Beyond PyYAML's own: a constructor's ValueError (``!!int
many``, an integer past Python's 4300-digit limit), nesting deep enough to exhaust Python's
recursion (``[[[[...``), a double-quoted ``"\\ud800"`` escape that is half a UTF-16 pair and
not a character (it breaks every later encode: a pattern, a log line, stdout), a file that is
not UTF-8 (UTF-16 and UTF-32 are named as such). A UTF-8 byte order mark is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from smtpfilter.core.errors import YamlError

__all__ = ["Mapping", "Sequence", "YamlError", "load_bytes", "load_file", "load_text"]


class Mapping(dict):
    """A dict that knows where it and each of its keys came from."""

    def __init__(self, *args: Any, source: str = "<defaults>", line: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source
        self.line = line
        self.key_lines: dict[str, int] = {}

    def where(self, key: str | None = None) -> str:
        line = self.key_lines.get(key, self.line) if key is not None else self.line
        return f"{self.source}:{line}"


class Sequence(list):
    """A list that knows the line of each item: a bad pattern in a list of ten is reported on
    its own line, not on the line of the key that holds the list."""

    def __init__(self, *args: Any, source: str = "<defaults>", line: int = 0) -> None:
        super().__init__(*args)
        self.source = source
        self.line = line
        self.item_lines: list[int] = []

    def where(self, index: int | None = None) -> str:
        if index is not None and 0 <= index < len(self.item_lines):
            return f"{self.source}:{self.item_lines[index]}"
        return f"{self.source}:{self.line}"


_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")


# Rules and settings are a few levels deep; PyYAML's composer recurses once per level and a
# few thousand "[" exhaust Python's stack (RecursionError).
_MAX_DEPTH = 50
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Loader(yaml.SafeLoader):
    source = "<string>"
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > _MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise YamlError(
                    f"{self.source}:{line}", f"nested more than {_MAX_DEPTH} levels deep"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as error:
            # A constructor given a value it cannot make: "!!int many", "!!float x", an integer
            # beyond sys.get_int_max_str_digits(). The innermost node names the line.
            raise YamlError(
                f"{self.source}:{node.start_mark.line + 1}", f"not valid YAML: {error}"
            ) from None


# Start from SafeLoader's resolvers minus YAML 1.1's bool, int, float and timestamp forms
# (no setting is a date; YAML 1.2's core schema has no timestamps either).
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag
        not in (
            "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:int",
            "tag:yaml.org,2002:float",
            "tag:yaml.org,2002:timestamp",
        )
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    # Decimal always: "0755" is 755, never octal.
    return int(loader.construct_scalar(node), 10)


def _construct_bool(loader: _Loader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() == "true"


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    surrogate = _SURROGATE.search(value)
    if surrogate:
        raise YamlError(
            f"{loader.source}:{node.start_mark.line + 1}",
            f"\\u{ord(surrogate.group()):04x} is half of a UTF-16 surrogate pair, not a "
            f"character: write the character itself, or its code point as \\U0001F600 "
            f"(not \\ud83d\\ude00)",
        )
    return value


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Mapping:
    loader.flatten_mapping(node)
    result = Mapping(source=loader.source, line=node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise YamlError(f"{loader.source}:{line}", f"key {key!r} must be a string")
        if key in result:
            raise YamlError(
                f"{loader.source}:{line}",
                f"duplicate key {key!r} (first at line {result.key_lines[key]})",
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Sequence:
    result = Sequence(source=loader.source, line=node.start_mark.line + 1)
    for item in node.value:
        result.append(loader.construct_object(item, deep=True))
        result.item_lines.append(item.start_mark.line + 1)
    return result


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load_text(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document; raise YamlError naming ``source:line``."""
    loader = None
    try:
        loader = _Loader(text)  # the reader checks every character here: ReaderError
        loader.source = source
        return loader.get_single_data()
    except YamlError:
        raise
    except yaml.reader.ReaderError as error:
        raise YamlError(_line_of(text, error.position, source), _forbidden(error)) from None
    except yaml.MarkedYAMLError as error:
        raise _marked(error, source) from None
    except yaml.YAMLError as error:
        raise YamlError(source, f"not valid YAML: {error}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _marked(error: yaml.MarkedYAMLError, source: str) -> YamlError:
    """``file:line:col`` and PyYAML's problem in one line (its ``str()`` spans four, with the
    offending line quoted and a caret under it)."""
    mark = error.problem_mark or error.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    problem = error.problem or error.context or str(error)
    if "'\\t'" in problem:
        # PyYAML: "found character '\t' that cannot start any token". YAML 1.2 §6.1: "tab
        # characters must not be used in indentation"; editors hide them, so say it plainly.
        return YamlError(where, "a tab: YAML indents with spaces only")
    if error.context and error.problem and error.context_mark is not None:
        # "while parsing a flow sequence ... expected ',' or ']'": the context says where the
        # construct that is left open began, often the line the admin has to fix.
        problem = f"{problem} ({error.context} at line {error.context_mark.line + 1})"
    return YamlError(where, f"not valid YAML: {problem}")


def _line_of(text: str, position: int, source: str) -> str:
    line = text.count("\n", 0, position) + 1
    column = position - text.rfind("\n", 0, position)  # rfind: -1 on line 1, so 1-based
    return f"{source}:{line}:{column}"


def _forbidden(error: yaml.reader.ReaderError) -> str:
    """What the reader refused, with what to do instead."""
    char = error.character
    code = char if isinstance(char, int) else ord(char) if isinstance(char, str) else None
    if code is None:
        return f"not valid YAML: {error.reason}"
    text = f"not valid YAML: character U+{code:04X} is not allowed in a YAML file"
    if code < 0x100:
        text += f" (a control character); in a double-quoted string write it as \\x{code:02x}"
    return text


# Byte order marks of encodings that are not UTF-8 (UTF-32 first: its LE mark starts like
# UTF-16's).
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def load_file(path: Path) -> Any:
    """Read and parse ``path``; unreadable files are YamlErrors too."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        # No line to point at: the caller that knows why the file was read (--config, a rules
        # entry) adds its own place; see settings.load_config and rules.load_rules.
        raise YamlError(str(path), f"cannot read: {error.strerror or error}") from None
    return load_bytes(raw, path)


def load_bytes(raw: bytes, path: Path) -> Any:
    """Parse what was read from ``path``: the encoding checks of :func:`load_file`."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise YamlError(f"{path}:1", f"{encoding} text: save the file as UTF-8")
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte order mark is harmless: dropped
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise YamlError(
            f"{path}:{line}",
            f"not UTF-8 text (byte 0x{raw[error.start]:02x}: {error.reason}); save the file "
            f"as UTF-8",
        ) from None
    return load_text(text, str(path))
