"""smtpfilter.yaml.example cannot drift from the code: it names every key the loader reads,
each with a comment, and loading it gives exactly the defaults.

The keys the loader knows are not listed here by hand: they are recorded while it reads an
empty file (config/options.py asks for every key of every section, present or not), so a key
added to config/settings.py without a line in the example fails this test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from smtpfilter.config import options, settings
from smtpfilter.config.yamlfile import Mapping, load_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "smtpfilter.yaml.example"


def _keys_the_loader_reads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    asked: set[str] = set()
    original = options.Options._get

    def recording(self: options.Options, key: str, default: object) -> object:
        asked.add(self.prefix + key)
        return original(self, key, default)

    monkeypatch.setattr(options.Options, "_get", recording)
    settings.config_from_mapping(Mapping(source="empty.yaml", line=1), ROOT, None)
    monkeypatch.undo()
    return asked


def _keys_in(mapping: Mapping, prefix: str = "") -> dict[str, tuple[Mapping, str]]:
    """Every key path of the file (sections too), with the mapping that holds it."""
    found: dict[str, tuple[Mapping, str]] = {}
    for key, value in mapping.items():
        found[prefix + key] = (mapping, key)
        if isinstance(value, Mapping):
            found.update(_keys_in(value, f"{prefix}{key}."))
    return found


def test_the_example_names_every_key_the_loader_reads(monkeypatch):
    in_example = set(_keys_in(load_file(EXAMPLE)))
    known = _keys_the_loader_reads(monkeypatch)
    assert sorted(known - in_example) == [], "keys missing from smtpfilter.yaml.example"
    assert sorted(in_example - known) == [], "keys in the example that the loader ignores"


def test_every_key_of_the_example_has_a_comment_on_its_line():
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    bare = [
        f"{EXAMPLE.name}:{holder.key_lines[key]}: {path}"
        for path, (holder, key) in _keys_in(load_file(EXAMPLE)).items()
        if " # " not in lines[holder.key_lines[key] - 1]
    ]
    assert bare == []


def test_loading_the_example_gives_the_defaults():
    from_example = settings.load_config(EXAMPLE)
    defaults = settings.config_from_mapping(Mapping(source="empty.yaml", line=1), ROOT, None)
    assert dataclasses.replace(from_example, source=None) == defaults


# Fields that are not keys of their own: derived from a key's value or read from Postfix.
_NOT_KEYS = {
    "source",  # the file's name
    "rules_written",  # the rules paths as the file spelled them, for error messages
    "limits.follows_postfix",  # limits.message_size: postfix
    "policy.thresholds",  # policy.tag, policy.reject, ...
    "postfix.message_size_limit",  # read with postconf
    "postfix.read",  # how it was read
}


def _fields(cls: type, prefix: str = "") -> set[str]:
    names = set()
    for field in dataclasses.fields(cls):
        default = field.default
        # A section is a dataclass; a HostPort or MilterListen (listen: ...) is one value.
        if dataclasses.is_dataclass(default) and not isinstance(
            default, (settings.HostPort, settings.MilterListen)
        ):
            names |= _fields(type(default), f"{prefix}{field.name}.")
        else:
            names.add(prefix + field.name)
    return names


def test_every_field_of_the_config_dataclasses_is_in_the_example():
    fields = _fields(settings.Config) | {f"tls.{f}" for f in ("cert", "key")}  # tls: None
    # AuthenticationConfig flattens its dkim: section into dkim_* fields.
    fields = {f.replace("authentication.dkim_", "authentication.dkim.") for f in fields}
    in_example = set(_keys_in(load_file(EXAMPLE)))
    assert sorted(fields - _NOT_KEYS - in_example) == []
