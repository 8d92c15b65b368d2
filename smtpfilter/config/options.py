"""Typed reading of one YAML mapping, collecting every problem with its place.

Config sections and rules are both read through :class:`Options`: each accessor checks the type,
converts units (durations like ``30d`` or ``500ms``, sizes like ``10m``) and marks the key as used;
:meth:`Options.finish` reports every key nobody asked for ("unknown key 'older_then'; did you mean
'older_than'?"). Problems are collected, not raised one by one, so an admin sees all of them in one
``check-config`` run. Warnings (:meth:`Options.warn`: usable, but probably not what was meant)
are collected the same way, into a list of their own, and reported where the log goes.
"""

from __future__ import annotations

import difflib
import logging
import re
from typing import Any, Iterable, Sequence

from smtpfilter.config.yamlfile import Mapping
from smtpfilter.config.yamlfile import Sequence as YamlList
from smtpfilter.core.errors import ConfigError, Problem

__all__ = ["ConfigError", "Options", "Problem", "in_file_order", "parse_duration", "parse_size"]

log = logging.getLogger(__name__)


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*([0-9]+)\s*([kmg]?)b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"500ms"``, ``"15m"``, ``"12h"``, ``"30d"``, ``"2w"``.

    A bare number is seconds, as in Postfix's time parameters (postconf(5), "Time units").
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 12h, 30d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    raise ValueError(f"{value!r} is not a duration such as 30s, 15m, 12h, 30d")


def parse_size(value: Any) -> int:
    """Bytes from ``10240000``, ``"512k"``, ``"10m"`` (binary multiples)."""
    if isinstance(value, bool):
        raise ValueError("expected a size in bytes such as 10240000 or 10m")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError(f"{value!r} is not a size such as 10240000, 512k or 10m")


_MISSING = object()


def what_it_is(value: Any) -> str:
    """A YAML value as the admin wrote it ("a list [1]"), not as Python holds it ("Sequence")."""
    if isinstance(value, list):
        return f"a list {_short(value)}"
    if isinstance(value, dict):
        return "a mapping (key: value lines)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return repr(value)


def _short(value: Any) -> str:
    text = repr(list(value))
    return text if len(text) <= 40 else text[:37] + "..."


def in_file_order(problems: Iterable[Problem]) -> list[Problem]:
    """Problems sorted as an admin reads the file: by line within each file (sections are
    checked in code order, which is not the file's), the files in the order they were first
    named. Places without a line come first in their file, in their own order."""
    problems = list(problems)
    first: dict[str, int] = {}
    for problem in problems:
        first.setdefault(problem.where.partition(":")[0], len(first))

    def key(problem: Problem) -> tuple[int, int]:
        source, _, line = problem.where.partition(":")
        number = line.split(":")[0]
        return first[source], int(number) if number.isdigit() else 0

    return sorted(problems, key=key)


class Options:
    """Read typed values out of one mapping; unknown keys are problems.

    ``problems`` is shared with the caller so that one load collects everything.
    """

    def __init__(
        self,
        mapping: Mapping,
        problems: list[Problem],
        *,
        rule: str | None = None,
        prefix: str = "",
        warnings: list[Problem] | None = None,
    ) -> None:
        self.mapping = mapping
        self.problems = problems
        self.rule = rule
        self.prefix = prefix
        # Shared with the caller like ``problems``; None: each warning is logged at once.
        self.warnings = warnings
        self._used: set[str] = set()
        self._needs: list[str] = []
        self._sections: set[str] = set()  # keys read as nested mappings (section())
        self._problems_before = len(problems)

    # --- bookkeeping -------------------------------------------------------------------
    def where(self, key: str | None = None, index: int | None = None) -> str:
        """``file:line`` of ``key`` (of its ``index``-th item when it holds a list)."""
        value = self.mapping.get(key) if key is not None else None
        if index is not None and isinstance(value, YamlList):
            return value.where(index)
        return self.mapping.where(key)

    def problem(self, key: str | None, message: str, *, index: int | None = None) -> None:
        label = f"{self.prefix}{key}: " if key else ""
        self.problems.append(Problem(self.where(key, index), label + message, self.rule))

    def need(self, message: str) -> None:
        """Something missing as a whole ("a date rule needs at least one of ..."): reported
        by :meth:`finish` only if nothing else was wrong here. A mistyped ``older_then`` or a
        bad ``older_than: yes`` leaves older_than unset too; saying so a second time would
        send the admin after a second mistake that is not there (one mistake, one error)."""
        self._needs.append(message)

    def warn(self, key: str | None, message: str, *, where: str | None = None) -> None:
        """Something usable but probably not meant; ``where`` names another file:line (a line
        of a table the rule reads) instead of the key's."""
        label = f"{self.prefix}{key}: " if key else ""
        warning = Problem(where or self.where(key), label + message, self.rule)
        if self.warnings is None:
            log.warning("%s", warning)
        else:
            self.warnings.append(warning)

    def has(self, key: str) -> bool:
        return key in self.mapping

    def _get(self, key: str, default: Any) -> Any:
        self._used.add(key)
        value = self.mapping.get(key, _MISSING)
        if value is _MISSING or value is None:
            return default
        return value

    def finish(self, known: Iterable[str] = ()) -> None:
        """Report keys nobody read; suggest the closest known one."""
        valid = set(known) | self._used
        for key in self.mapping:
            if key in valid:
                continue
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            # The full path in both names: "limits.sesions" → "limits.sessions" is what the
            # admin searches the README for.
            hint = f"; did you mean '{self.prefix}{close[0]}'?" if close else ""
            head, _, rest = key.partition("_")
            if not close and head in self._sections and rest:
                # "log_level:" for "log: {level: ...}", a habit of flat config formats
                hint = (f"; did you mean '{self.prefix}{head}.{rest}' ({rest}: indented "
                        f"under {head}:)?")
            elif not close and len(valid) <= 20:
                hint = f"; known: {', '.join(sorted(valid))}"
            # The typo's own line, not its block's: key_lines keeps every key's line.
            self.problems.append(Problem(
                self.mapping.where(key), f"unknown key '{self.prefix}{key}'{hint}", self.rule
            ))
        if len(self.problems) == self._problems_before:
            for message in self._needs:
                self.problem(None, message)
        self._needs.clear()

    def ignore_rest(self, known: Sequence[str] = ()) -> None:
        """Mark every key as read but near misses of ``known``: when the rule kind is unknown
        its options cannot be checked, and calling each of them an unknown key would bury the
        one real mistake (a mistyped ``chek:`` is still reported, as a typo of ``check``)."""
        self._used.update(
            key for key in self.mapping if not difflib.get_close_matches(key, known, n=1)
        )

    # --- typed accessors ---------------------------------------------------------------
    def raw(self, key: str, default: Any = None) -> Any:
        return self._get(key, default)

    def str(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            if required:
                # Deferred: after "unknown key 'result'; did you mean 'results'?" it is noise.
                self.need(f"{self.prefix}{key}: is required")
            return default
        if isinstance(value, bool):
            self.problem(key, f"expected text, got {value!r} (quote it)")
            return default
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            self.problem(key, f"expected text, got {what_it_is(value)}")
            return default
        return value

    def bool(self, key: str, default: bool = False) -> bool:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {value!r}")
            return default
        return value

    def number(
        self, key: str, default: Any = None, *, minimum: float | None = None
    ) -> Any:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(key, f"expected a number, got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.problem(key, f"must be at least {minimum}, got {value}")
            return default
        return value

    def integer(self, key: str, default: Any = None, *, minimum: int | None = None) -> Any:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"expected a whole number, got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.problem(key, f"must be at least {minimum}, got {value}")
            return default
        return value

    def duration(self, key: str, default: Any = None, *, positive: bool = False) -> Any:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            self.problem(key, str(error))
            return default
        if positive and seconds <= 0:
            self.problem(key, "must be longer than zero")
            return default
        return seconds

    def size(self, key: str, default: Any = None) -> Any:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            return default
        try:
            return parse_size(value)
        except ValueError as error:
            self.problem(key, str(error))
            return default

    def str_list(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        """A string or a list of strings; always returns a list (or ``default``)."""
        value = self._get(key, _MISSING)
        if value is _MISSING:
            if required:
                # Deferred: after "unknown key 'result'; did you mean 'results'?" it is noise.
                self.need(f"{self.prefix}{key}: is required")
            return default
        items = value if isinstance(value, list) else [value]
        result = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                self.problem(key, f"expected text or a list of text, got {item!r}")
                return default
            result.append(str(item))
        if not result and required:
            self.problem(key, "must not be empty")
            return default
        return result

    def choice(self, key: str, choices: Sequence[str], default: Any = None) -> Any:
        value = self.str(key, _MISSING)
        if value is _MISSING:
            return default
        if value not in choices:
            self.problem(key, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def section(self, key: str) -> "Options":
        """A nested mapping, read with the same problem list."""
        self._sections.add(key)
        value = self._get(key, _MISSING)
        if value is _MISSING:
            empty = Mapping(source=self.mapping.source, line=self.mapping.line)
            return Options(
                empty, self.problems, rule=self.rule, prefix=f"{self.prefix}{key}.",
                warnings=self.warnings,
            )
        if not isinstance(value, Mapping):
            self.problem(key, f"expected a mapping of settings, got {what_it_is(value)}")
            value = Mapping(source=self.mapping.source, line=self.mapping.line)
        return Options(
            value, self.problems, rule=self.rule, prefix=f"{self.prefix}{key}.",
            warnings=self.warnings,
        )
