"""smtpfilter: a small, safe SMTP content filter for Postfix (FILTER_README's advanced mode).

The path of one message, one module each:
``frontdoors/smtp/session`` (the SMTP dialect) → ``frontdoors/smtp/transaction`` (one
transaction, MAIL and RCPT in lockstep with 10026) → ``engine/judge`` (the one call every front
door makes) → ``engine/pipeline`` (run the rules) → ``engine/checks/`` (one module per rule kind)
→ ``engine/policy`` (one Decision) → ``delivery/downstream`` (the 10026 side) → ``core/replies``
(every reply we send). Layers, lowest first: core → config → postfix → engine → delivery →
service → frontdoors → tools → cli (tests/unit/test_architecture.py keeps it so).
"""

# Kept equal to pyproject.toml's version by tests/packaging/test_version.py; bump both
# as CHANGELOG.md's version policy says.
__version__ = "0.2.0"
__all__ = ["__version__", "installed_version"]


def installed_version() -> str:
    """The version pip installed (importlib.metadata), or ``__version__`` when this tree runs
    uninstalled (PYTHONPATH=. python -m smtpfilter). Looked up on demand: the lookup scans
    sys.path (~20 ms), which only ``--version`` needs."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smtpfilter")
    except PackageNotFoundError:
        return __version__
