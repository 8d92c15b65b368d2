"""How DNS list verdicts become decisions and headers (policy and Rule.verdict)."""

from __future__ import annotations

import textwrap

from smtpfilter.config.settings import HeadersConfig, PolicyConfig
from smtpfilter.core.verdict import Action, Finding, Verdict
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.rules import load_rules

DETAIL = "zen.test=127.0.0.4(+3) bl.test=- total=3"


def policy(**headers) -> Policy:
    return Policy(PolicyConfig(()), HeadersConfig(**headers))


def test_status_header_shows_each_lists_answer_and_the_total():
    finding = Finding("LISTED", "client 1.2.3.4 listed", (), DETAIL)
    decision = policy().decide([Verdict("DNSBL", finding, 6, Action.TAG)])
    assert decision.action is Action.TAG
    assert decision.headers[-1] == (
        "X-Smtpfilter-Status",
        f"Yes, score=6, rules=DNSBL(LISTED) [{DETAIL}]",
    )


def test_a_findings_own_action_overrides_the_rules_action_score_and_text(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            rules:
              - name: DNSBL
                check: dnsbl
                sites: "zen.test*3, wl.test*-4"
                threshold: 3
                allowlist_threshold: -1
                action: reject
                score: 10
                text: "5.7.1 blocked using $2"
            """
        )
    )
    [rule] = load_rules([path]).rules
    assert rule.is_async and rule.kind == "dnsbl"
    listed = rule.verdict(Finding("LISTED", "listed", ("1.2.3.4", "zen.test", "", "3")))
    assert (listed.action, listed.score, listed.text) == (Action.REJECT, 10, "5.7.1 blocked using $2")
    allowed = rule.verdict(Finding("ALLOWLISTED", "allowlisted", action=Action.ACCEPT))
    assert (allowed.action, allowed.score, allowed.text) == (Action.ACCEPT, 0.0, None)
    assert allowed.forces
    deferred = rule.verdict(Finding("DNS_ERROR", "failed", action=Action.TEMPFAIL))
    decision = policy().decide([deferred])
    assert decision.action is Action.TEMPFAIL and decision.text is None


def test_the_annotated_example_loads_and_is_not_shipped_by_default():
    from smtpfilter.config.settings import shipped_rules_dir

    shipped = shipped_rules_dir()
    ruleset = load_rules([shipped / "examples" / "dnsbl.yaml"])
    dnsbl, dbl = ruleset.rules
    assert dnsbl.kind == "dnsbl" and dnsbl.check.threshold == 3
    assert dnsbl.check.allowlist_threshold == -1
    assert [s.weight for s in dnsbl.check.sites] == [2, 1, 2, 1, 1, 1, 1, -2, -3, -4]
    assert dbl.kind == "rhsbl" and dbl.check.lookup == ("sender", "from")
    assert all(r.kind not in ("dnsbl", "rhsbl") for r in load_rules([shipped]).rules)
