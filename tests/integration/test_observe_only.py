"""Observe-only, end to end: mode: warn and dry_run deliver, and the log says what would happen."""

from __future__ import annotations

import logging

import pytest

from smtpfilter.config.settings import HeadersConfig, PolicyConfig
from smtpfilter.core.verdict import Action, Finding, Mode, Verdict
from smtpfilter.engine.policy import Policy
from tests.support import loglines
from tests.support.client import send_message
from tests.support.messages import date_header, message

RULES = r"""
rules:
  - name: OLD_DATE
    check: date
    older_than: 30d
    action: tag
  - name: SPAM_MAILER
    check: header
    header: X-Mailer
    match: '^MaxBulk'
    action: discard
    mode: {mailer_mode}
  - name: BAD_SUBJECT
    check: header
    header: Subject
    match: 'viagra'
    action: reject
    mode: {subject_mode}
  - name: HELD
    check: header
    header: Subject
    match: 'hold me'
    action: quarantine
"""


def rules(mailer: str = "enforce", subject: str = "enforce") -> str:
    return RULES.format(mailer_mode=mailer, subject_mode=subject)


def message_line(caplog) -> loglines.LogLine:
    [line] = loglines.from_caplog(caplog)
    caplog.clear()
    return line


@pytest.fixture(autouse=True)
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="smtpfilter")


async def test_warn_mode_delivers_untouched_and_logs_what_it_would_do(start_filter, sink, caplog):
    server = await start_filter(rules=rules(mailer="warn"))
    wire = message("X-Mailer: MaxBulk.Mailer 12", "Subject: bulk")
    reply = await send_message(server.port, wire)

    assert reply.code == 250 and reply.text.startswith("2.0.0 Ok: queued as")
    assert sink.messages[-1].data == wire  # nothing added, nothing removed
    line = message_line(caplog)
    assert (line["action"], line["would"], line["would_by"]) == ("accept", "discard", "SPAM_MAILER")
    assert line["rules"] == "SPAM_MAILER(MATCH)"
    assert line["status"].startswith("sent (250 2.0.0 Ok: queued as")


async def test_warn_mode_alongside_an_enforced_tag(start_filter, sink, caplog):
    server = await start_filter(rules=rules(subject="warn"))
    wire = message("Subject: cheap viagra", date_header(days_ago=45))
    reply = await send_message(server.port, wire)

    assert reply.code == 250
    assert sink.messages[-1].data.startswith(b"X-Spam-Flag: YES\r\n")  # OLD_DATE's tag is real
    line = message_line(caplog)
    assert (line["action"], line["would"], line["would_by"]) == ("tag", "reject", "BAD_SUBJECT")
    assert line["rules"] == "OLD_DATE(IN_PAST)+BAD_SUBJECT(MATCH)", line


async def test_dry_run_delivers_everything_and_logs_the_rule(start_filter, sink, caplog):
    server = await start_filter(rules=rules(), config="dry_run: true\nquarantine: {directory: q}\n")
    cases = [
        (message("Subject: viagra"), ("reject", "BAD_SUBJECT")),
        (message("X-Mailer: MaxBulk"), ("discard", "SPAM_MAILER")),
        (message("Subject: hold me"), ("quarantine", "HELD")),
        (message("Subject: x", date_header(days_ago=45)), ("tag", "OLD_DATE")),
    ]
    for wire, expected in cases:
        reply = await send_message(server.port, wire)
        assert reply.code == 250 and "queued as" in reply.text
        assert sink.messages[-1].data == wire  # untouched, not even tagged
        line = message_line(caplog)
        assert line["action"] == "accept", line
        assert (line["would"], line["would_by"]) == expected, line
        assert line.names[-2:] == ["delay", "status"], line
    assert len(sink.messages) == len(cases)
    assert server.runtime.counters.get("delivered") == len(cases)


async def test_warn_mode_reject_next_to_an_enforced_discard(start_filter, sink, caplog):
    # An enforced rule decides as usual; an observe-only one changes nothing.
    server = await start_filter(rules=rules(subject="warn"))
    reply = await send_message(server.port, message("X-Mailer: MaxBulk", "Subject: viagra"))
    assert reply.text == "2.0.0 Ok: discarded by content filter (SPAM_MAILER)"
    assert sink.messages == []
    line = message_line(caplog)
    assert line["action"] == "discard" and line["status"].startswith("discarded (250 "), line


# --- what "would" means --------------------------------------------------------------------------
def verdict(rule, action=None, score=0.0, mode=Mode.WARN):
    return Verdict(rule, Finding("MATCH", "m"), score, action, mode)


def test_would_is_the_decision_with_observe_only_rules_enforced():
    policy = Policy(PolicyConfig(((5.0, Action.TAG), (10.0, Action.REJECT))), HeadersConfig())
    # An earlier warn-mode tag does not hide a later warn-mode discard.
    decision = policy.decide([verdict("T", Action.TAG), verdict("D", Action.DISCARD)])
    assert (decision.action, decision.intended, decision.intended_rule) == (
        Action.ACCEPT, Action.DISCARD, "D")
    # A warn-mode score counts toward the thresholds it would reach.
    decision = policy.decide([verdict("S", score=4, mode=Mode.ENFORCE), verdict("W", score=7)])
    assert decision.action is Action.ACCEPT and decision.intended is Action.REJECT  # 4, 4+7
    assert decision.intended_rule is None and decision.score == 4
