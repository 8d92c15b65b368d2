"""Verdicts → Decision: first forcing rule wins, then score thresholds, then tag."""

from __future__ import annotations

import pytest

from smtpfilter.config.settings import HeadersConfig, PolicyConfig
from smtpfilter.core.verdict import Action, Finding, Mode, Verdict
from smtpfilter.engine.policy import Policy


def v(rule, score=0.0, action=None, mode=Mode.ENFORCE, text=None, groups=()):
    return Verdict(rule, Finding("MATCH", f"{rule} matched", groups), score, action, mode, text)


def policy(thresholds=(), dry_run=False, **headers):
    return Policy(PolicyConfig(tuple(thresholds)), HeadersConfig(**headers), dry_run=dry_run)


def test_first_forcing_verdict_wins():
    decision = policy().decide([v("A", 1, Action.TAG), v("B", 0, Action.DISCARD), v("C", 0, Action.REJECT)])
    assert decision.action is Action.DISCARD and decision.rule == "B"


def test_accept_first_overrides_everything():
    decision = policy([(1, Action.REJECT)]).decide([v("OK", 0, Action.ACCEPT), v("BAD", 50)])
    assert decision.action is Action.ACCEPT and decision.headers == ()


@pytest.mark.parametrize(
    ("score", "action"),
    [(0, Action.ACCEPT), (4.9, Action.ACCEPT), (5, Action.TAG), (14, Action.TAG), (15, Action.REJECT), (99, Action.DISCARD)],
)
def test_highest_reached_threshold(score, action):
    p = policy([(5, Action.TAG), (15, Action.REJECT), (30, Action.DISCARD)])
    assert p.decide([v("S", score)] if score else []).action is action


def test_tag_headers():
    decision = policy().decide([v("A", 2.5, Action.TAG), v("B", 1)])
    assert decision.action is Action.TAG
    assert decision.headers == (
        ("X-Spam-Flag", "YES"),
        ("X-Smtpfilter-Status", "Yes, score=3.5, rules=A(MATCH), B(MATCH)"),
    )


def test_add_status_always_and_never():
    assert policy(add_status="always").decide([]).headers == (
        ("X-Smtpfilter-Status", "No, score=0, rules=none"),
    )
    assert policy(add_status="never").decide([v("A", 0, Action.TAG)]).headers == (("X-Spam-Flag", "YES"),)


def test_warn_mode_observes_only():
    decision = policy([(1, Action.REJECT)]).decide([v("W", 5, Action.REJECT, Mode.WARN)])
    assert decision.action is Action.ACCEPT
    assert decision.intended is Action.REJECT
    assert decision.score == 0  # a warn-mode score does not count


def test_dry_run_delivers_and_remembers():
    decision = policy(dry_run=True).decide([v("R", 0, Action.REJECT)])
    assert decision.action is Action.ACCEPT and decision.intended is Action.REJECT
    assert decision.headers == ()


def test_reply_text_substitution():
    decision = policy().decide([v("R", 0, Action.REJECT, text="5.7.1 no $1 here, ${2}!", groups=("spam", "thanks"))])
    assert decision.text == "5.7.1 no spam here, thanks!"
