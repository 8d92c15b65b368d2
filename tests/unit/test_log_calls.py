"""No Python repr in any log line (issue 13): ``'x'`` with Python's quotes and escapes is not
what a Postfix admin's grep expects, and the escaping of what we log is service/logs.py's job
(``\\xNN``), the same for every line.

Read from the source with ``ast``: every logging call (``log.info(...)``, ``log.log(...)``...)
and every text that reaches a log line through a value (a rule's Finding reason, logged at
debug and quoted in headers; a DownstreamError, logged by the front doors) must not use
``%r``, ``!r`` or ``repr()``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "smtpfilter"
_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}
_LOGGED_VALUES = {"Finding", "DownstreamError"}


def _reprs(node: ast.AST) -> list[str]:
    """The repr-producing parts inside ``node``."""
    found = []
    for part in ast.walk(node):
        if isinstance(part, ast.Constant) and isinstance(part.value, str) and "%r" in part.value:
            found.append("%r")
        elif isinstance(part, ast.FormattedValue) and part.conversion == ord("r"):
            found.append("!r")
        elif isinstance(part, ast.Call) and isinstance(part.func, ast.Name) and part.func.id == "repr":
            found.append("repr()")
    return found


def _is_log_call(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr in _LOG_METHODS
        and isinstance(func.value, ast.Name)
        and func.value.id in ("log", "logger", "logging")
    )


def _is_logged_value(call: ast.Call) -> bool:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return name in _LOGGED_VALUES


def test_no_python_repr_in_log_calls_or_logged_values():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (_is_log_call(node) or _is_logged_value(node)):
                for kind in _reprs(node):
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {kind}")
    assert offenders == []


def test_the_scan_finds_what_it_looks_for():
    # The test above cannot pass for want of seeing: each form is caught.
    for source in ('log.warning("x %r", y)', 'log.info(f"{y!r}")', 'log.error("%s", repr(y))',
                   'Finding("CODE", f"value {v!r}")'):
        [call] = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
                  and (_is_log_call(n) or _is_logged_value(n))]
        assert _reprs(call), source
