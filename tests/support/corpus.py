"""The golden corpus (tests/corpus/): real-shaped messages, the rules of every kind, and what
smtpfilter makes of each message today (expected.yaml).

A message file holds the message content as a client sends it after DATA, before
dot-stuffing: CRLF lines except where a file is about something else (10-bare-lf.eml), 8-bit
and NUL bytes as they are (``*.eml binary`` in .gitattributes keeps git from touching them).

expected.yaml, per message:

- ``envelope`` (optional): ``mail_from``, ``rcpts``, ``smtputf8``, ``client`` (the XFORWARD ADDR);
- ``findings``: rule → finding code, for every corpus rule that finds something;
- ``action``: the decision, with the corpus policy (tag at 5, reject at 10);
- ``wire``: ``exact`` (the bytes reach 10026 as sent, plus our headers) or ``normalised``
  (bare CR/LF rewritten before they leave: the smuggling defence, core/wire.py);
- ``known``: where today's verdict is a known defect of another issue, that issue and why
  (issue 11 changes no behaviour: the verdict recorded is today's).

Each rule kind's unit tests compare the findings of their own kind's corpus rules
(:func:`findings`); test_corpus.py the decisions; the integration test the bytes at the sink.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import yaml

from smtpfilter.config.settings import DnsConfig, HeadersConfig, HostPort, PolicyConfig
from smtpfilter.core.envelope import Client
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Action, Decision
from smtpfilter.core.wire import has_bare_line_ends, normalise
from smtpfilter.engine.pipeline import observe, verdicts_of
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.resolver import DnsService
from smtpfilter.engine.rules import RuleEnv, RuleSet, load_rules

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
MESSAGES = sorted(path.name for path in CORPUS.glob("*.eml"))
# The receipt time every corpus judgement uses: the day after the messages' own Date.
RECEIVED_AT = datetime(2024, 3, 5, 12, 0, tzinfo=timezone.utc)
HEADER_LIMIT = 8192  # limits.header_size of the corpus: 14-many-headers.eml goes past it
POLICY = PolicyConfig(((5.0, Action.TAG), (10.0, Action.REJECT)))


def content(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def wire(name: str) -> bytes:
    """The DATA bytes a client sends for the message: dot-stuffed along CRLF lines (RFC 5321
    §4.5.2), other line ends as they are in the file."""
    data = content(name).replace(b"\r\n.", b"\r\n..")
    return b"." + data if data.startswith(b".") else data


def envelope(name: str) -> dict[str, Any]:
    return {
        "mail_from": "sender@example.org",
        "rcpts": ["bob@example.com"],
        "smtputf8": False,
        "client": None,
        **EXPECTED[name].get("envelope", {}),
    }


def ruleset(kinds: Iterable[str] | None = None, dns_port: int | None = None) -> RuleSet:
    """The corpus rules (only those of ``kinds`` when given); DNS lists ask ``dns_port``."""
    dns = DnsConfig(
        nameservers=(HostPort("127.0.0.1", dns_port or 9),), timeout=1.0, message_timeout=2.0
    )
    loaded = load_rules([CORPUS / "rules.yaml"], RuleEnv(dns=DnsService(dns)))
    wanted = set(kinds) if kinds is not None else None
    rules = tuple(r for r in loaded.rules if wanted is None or r.kind in wanted)
    # The MIME structure is walked as for the whole corpus set (which reads bodies), so a
    # limits rule alone still sees the MIME limits.
    return RuleSet(rules, loaded.files, loaded.env, loaded.warnings,
                   needs_body=loaded.needs_body, mime=loaded.mime)


def context(name: str) -> MessageContext:
    """The message as the filter's rules see it (bare line ends normalised first, as the
    SMTP front door does)."""
    data = wire(name)
    if has_bare_line_ends(data):
        data = normalise(data)
    env = envelope(name)
    client = Client(addr=env["client"], name="unknown") if env["client"] else Client()
    return MessageContext.build(
        data,
        received_at=RECEIVED_AT,
        mail_from=env["mail_from"],
        rcpt_to=tuple(env["rcpts"]),
        client=client,
        header_limit=HEADER_LIMIT,
    )


async def findings(name: str, rules: RuleSet) -> dict[str, str]:
    """Every rule of ``rules`` that finds something in the message: rule → finding code."""
    results = await observe(rules, context(name), observe_all=True)
    return {rule.name: finding.code for rule, finding in results if finding is not None}


def expected_findings(name: str, rules: RuleSet) -> dict[str, str]:
    names = {rule.name for rule in rules.rules}
    return {rule: code for rule, code in EXPECTED[name]["findings"].items() if rule in names}


async def decision(name: str, rules: RuleSet) -> Decision:
    results = await observe(rules, context(name))
    return Policy(POLICY, HeadersConfig()).decide(verdicts_of(results))
