"""smtpfilter: a small, safe SMTP content filter for Postfix (FILTER_README's advanced mode).

The path of one message, one module each:
``smtp`` (the listener's SMTP dialect) → ``handler`` (one transaction, in lockstep with 10026)
→ ``pipeline`` (run the rules) → ``checks`` (one module per rule kind) → ``policy`` (one
decision) → ``reinject`` (the 10026 side) → ``replies`` (every reply we send).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
