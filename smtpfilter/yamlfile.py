"""Load YAML the way an admin reads it, with line numbers for every error.

PyYAML's ``safe_load`` speaks YAML 1.1: ``yes``/``no``/``on``/``off`` become booleans, ``22:30``
becomes 1350, ``0755`` becomes 493, and a duplicated key silently wins (shared/TRAPS.md). In a
rule file each of those is a quiet misreading, so this loader resolves only ``true``/``false`` as
booleans, decimal digits as integers, plain decimals as floats, and treats a duplicate key as an
error. Every mapping remembers the line of each key, so errors can say ``file:line``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Mapping", "YamlError", "load_file", "load_text"]


class YamlError(Exception):
    """A file that is not the YAML we accept; ``where`` is ``file:line``."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


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


_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")


class _Loader(yaml.SafeLoader):
    source = "<string>"


# Start from SafeLoader's resolvers minus YAML 1.1's bool, int and float forms.
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag
        not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
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


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load_text(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document; raise YamlError naming ``source:line``."""
    loader = _Loader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except YamlError:
        raise
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 0
        raise YamlError(f"{source}:{line}", f"not valid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise YamlError(f"{source}:0", f"not valid YAML: {error}") from None
    finally:
        loader.dispose()


def load_file(path: Path) -> Any:
    """Read and parse ``path``; unreadable files are YamlErrors too."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise YamlError(f"{path}:0", f"not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise YamlError(f"{path}:0", f"cannot read: {error.strerror or error}") from None
    return load_text(text, str(path))
