"""The golden corpus (tests/corpus/) as a whole: every message has its expectations, every rule
kind has corpus rules, and the decision of the whole corpus rule set is the expected one.

Each rule kind's own tests check its findings on the corpus; tests/integration/test_corpus_wire.py
sends every message through a real filter to the recording sink.
"""

from __future__ import annotations

import pytest

from smtpfilter.core.text import escape
from smtpfilter.engine.checks import CHECK_KINDS
from tests.support import corpus


def test_every_message_has_expectations_and_every_expectation_a_message():
    assert corpus.MESSAGES and sorted(corpus.EXPECTED) == corpus.MESSAGES
    for name, expected in corpus.EXPECTED.items():
        assert set(expected) <= {"envelope", "findings", "action", "wire", "known"}, name
        assert expected["wire"] in ("exact", "normalised"), name


def test_every_rule_kind_has_corpus_rules():
    """A new rule kind adds corpus rules (and expectations) with its module."""
    assert {rule.kind for rule in corpus.ruleset().rules} == set(CHECK_KINDS)


def test_known_defects_name_their_issue():
    for name, expected in corpus.EXPECTED.items():
        if "known" in expected:
            assert expected["known"].startswith("issue "), name


@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_decision(name, dns_server):
    """Every corpus rule over the message, then the policy: the expected outcome (a known
    defect's outcome included: see its ``known`` note in expected.yaml)."""
    rules = corpus.ruleset(dns_port=dns_server.port)
    try:
        assert await corpus.findings(name, rules) == corpus.EXPECTED[name]["findings"]
        decision = await corpus.decision(name, rules)
    finally:
        await rules.env.dns.aclose()
    assert decision.action.value == corpus.EXPECTED[name]["action"], escape(decision.reason)
