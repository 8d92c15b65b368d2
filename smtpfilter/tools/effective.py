"""``smtpfilter check-config --show``: the effective configuration, as ``postconf`` prints main.cf.

Every setting the filter runs with, in the config file's own YAML keys, defaults included
(``--show``), or only those that differ from the defaults (``-n``, as ``postconf -n``). Each
value set in the file carries its ``file:line`` as a comment, so the answer to "where does this
come from?" is on the line. The output is itself a valid config file: loading it gives the same
settings (tests/integration/test_check_config.py checks that round trip), so it can be diffed
between hosts or kept as a record.

Written by hand rather than with ``yaml.safe_dump``: the comments are the point, and the few
values that are not plain data (addresses, networks, paths, durations in seconds) are shown in
the form the config file takes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from enum import Enum
from pathlib import Path
from typing import Any

from smtpfilter.config.settings import Config, HostPort, MilterListen
from smtpfilter.config.yamlfile import Mapping, YamlError, load_file

__all__ = ["effective_config"]

# Fields of the dataclasses that are not keys of the file: derived when it was read
# (rules_written: the rules paths as the file spelled them, for error messages).
_DERIVED = {("source",), ("limits", "follows_postfix"), ("postfix", "message_size_limit"),
            ("postfix", "read"), ("rules_written",)}


def _scalar(value: Any) -> str:
    """One value in YAML (flow style; JSON strings are YAML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) and abs(value) < 1e15 else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Enum):
        return json.dumps(value.value)
    if isinstance(value, (HostPort, MilterListen, Path, ipaddress.IPv4Network,
                          ipaddress.IPv6Network)):
        return json.dumps(str(value))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _effective(config: Config) -> dict[str, Any]:
    """The settings as nested dicts keyed like the file, values as the filter uses them."""

    def walk(obj: Any, path: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in dataclasses.fields(obj):
            key = path + (item.name,)
            if key in _DERIVED:
                continue
            value = getattr(obj, item.name)
            if key == ("policy",):
                out["policy"] = {action.value: threshold for threshold, action in value.thresholds}
            elif key == ("authentication",):
                # dkim_min_key_bits is written authentication: {dkim: {min_key_bits: ...}}
                section = walk(value, key)
                section["dkim"] = {name.removeprefix("dkim_"): section.pop(name)
                                   for name in list(section) if name.startswith("dkim_")}
                out["authentication"] = section
            elif key == ("limits",):
                section = walk(value, key)
                if value.follows_postfix:
                    section["message_size"] = "postfix"
                out["limits"] = section
            elif dataclasses.is_dataclass(value) and not isinstance(value, (HostPort,
                                                                            MilterListen)):
                out[item.name] = walk(value, key)
            else:
                out[item.name] = value
        return out

    return walk(config, ())


def _set_in_file(path: Path | None) -> Mapping | None:
    if path is None:
        return None
    try:
        data = load_file(path)
    except YamlError:
        return None
    return data if isinstance(data, Mapping) else None


def effective_config(config: Config, path: Path | None, *, changed_only: bool = False) -> str:
    settings = _effective(config)
    defaults = _effective(Config(postfix=config.postfix))
    written = _set_in_file(path)
    source = config.source or "no config file"
    what = "settings that differ from the defaults" if changed_only else "effective settings"
    lines = [f"# smtpfilter {what} ({source}; '# file:line' marks a value set there)"]
    if config.limits.follows_postfix:
        lines.append(f"# limits.message_size: postfix = {config.limits.message_size} bytes now "
                     f"({config.postfix.read})")

    def emit(values: dict[str, Any], default: dict[str, Any], file: Any,
             indent: str) -> list[str]:
        out: list[str] = []
        for key, value in values.items():
            mark = f"  # {file.where(key)}" if isinstance(file, Mapping) and key in file else ""
            sub_file = file.get(key) if isinstance(file, Mapping) else None
            sub_default = default.get(key)
            if isinstance(value, dict):
                body = emit(value, sub_default if isinstance(sub_default, dict) else {},
                            sub_file, indent + "  ")
                if body or not changed_only:
                    # Only comments below: an empty mapping, which a null would not be.
                    empty = all(line.lstrip().startswith("#") for line in body)
                    out.append(f"{indent}{key}:" + (" {}" if empty else "") + mark)
                    out.extend(body)
                continue
            if changed_only and key in default and default[key] == value:
                continue
            if value is None:
                out.append(f"{indent}# {key}: not set{mark}")
            else:
                out.append(f"{indent}{key}: {_scalar(value)}{mark}")
        return out

    lines.extend(emit(settings, defaults, written, ""))
    return "\n".join(lines) + "\n"
