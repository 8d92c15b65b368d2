"""smtpfilter: a small, safe SMTP content filter for Postfix (FILTER_README's advanced mode).

The path of one message, one module each:
``frontdoors/smtp/session`` (the SMTP dialect) → ``frontdoors/smtp/transaction`` (one
transaction, MAIL and RCPT in lockstep with 10026) → ``engine/judge`` (the one call every front
door makes) → ``engine/pipeline`` (run the rules) → ``engine/checks/`` (one module per rule kind)
→ ``engine/policy`` (one Decision) → ``delivery/downstream`` (the 10026 side) → ``core/replies``
(every reply we send). Layers, lowest first: core → config → postfix → engine → delivery →
service → frontdoors → tools → cli (tests/unit/test_architecture.py keeps it so).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
