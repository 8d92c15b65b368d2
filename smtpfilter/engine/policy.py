"""Verdicts → one Decision. The only place where findings become an outcome.

1. The first verdict (in rule order) whose rule forces a final action decides: accept, reject,
   tempfail or discard. That is Postfix's "first match wins" for table actions, and how an
   ``accept`` allowlist rule placed first overrides everything after it.
2. Otherwise the total score meets the thresholds (rspamd's actions.conf): the highest threshold
   reached decides (``tag: 5, reject: 15`` → 7 tags, 20 rejects).
3. Otherwise a rule with ``action: tag`` tags the message; else it is delivered as it is.

Rules in ``mode: warn`` and the global ``dry_run`` observe only: the decision they would have
made is kept as ``intended`` (and ``intended_rule``) for the log ("would=reject would_by=RULE"),
and the message is delivered untouched (dry_run) or as the enforced rules decide (mode: warn).
What a warn-mode rule "would" do is found by deciding again with it enforced, so its score
counts toward the thresholds and an earlier tag does not hide a later reject.

The headers we add are chosen here too: X-Spam-Flag and the status header by the decision, and
with ``authentication.authserv_id`` one Authentication-Results header (RFC 8601) at the top of
every message that is delivered or quarantined, incoming ones naming our id removed
(:meth:`Policy.authenticated`; the results come from engine/auth through the pipeline).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

from smtpfilter.config.settings import Config, HeadersConfig, PolicyConfig
from smtpfilter.core.replies import render_text
from smtpfilter.core.verdict import Action, Decision, Mode, Verdict
from smtpfilter.engine.auth.header import NAME as AUTHENTICATION_RESULTS

if TYPE_CHECKING:  # pragma: no cover
    from smtpfilter.core.message import Header

__all__ = ["Policy"]


def _score(value: float) -> str:
    return f"{value:g}"


class Policy:
    def __init__(
        self,
        config: PolicyConfig,
        headers: HeadersConfig,
        *,
        dry_run: bool = False,
        authserv_id: str | None = None,
    ) -> None:
        self.thresholds = config.thresholds  # ascending by score
        self.headers = headers
        self.dry_run = dry_run
        self.authserv_id = authserv_id  # None: no Authentication-Results header

    @classmethod
    def for_config(cls, config: Config) -> "Policy":
        """The policy a configuration describes: the one place its settings meet."""
        return cls(
            config.policy,
            config.headers,
            dry_run=config.dry_run,
            authserv_id=config.authentication.authserv_id,
        )

    def wants_authentication(self, decision: Decision) -> bool:
        """Whether ``decision`` gets our Authentication-Results: every message that is
        delivered now or stored in the quarantine for delivery later."""
        return self.authserv_id is not None and (
            decision.delivers or decision.action is Action.QUARANTINE
        )

    def authenticated(
        self, decision: Decision, value: str, forged: tuple["Header", ...]
    ) -> Decision:
        """``decision`` with our Authentication-Results (``value``) first among our headers, at
        the top of the message as RFC 8601 §5 asks of a trace-like field, and the incoming
        fields that carry our authserv-id (``forged``) to be removed: a sender must never be
        able to show a reader a "pass" in our name."""
        return replace(
            decision,
            headers=((AUTHENTICATION_RESULTS, value), *decision.headers),
            drop=forged,
        )

    def by_score(self, score: float) -> tuple[Action, float] | None:
        reached = None
        for threshold, action in self.thresholds:
            if score >= threshold:
                reached = (action, threshold)
        return reached

    def decide(self, verdicts: Sequence[Verdict]) -> Decision:
        all_verdicts = tuple(verdicts)
        enforced = [v for v in verdicts if v.mode is Mode.ENFORCE]
        decision = self._outcome(enforced, all_verdicts)
        score = decision.score
        intended, intended_rule = decision.action, decision.rule
        if self.dry_run:
            if decision.action is not Action.ACCEPT:
                decision = Decision(
                    Action.ACCEPT, score, all_verdicts, rule=decision.rule, reason=decision.reason
                )
        elif len(enforced) < len(all_verdicts) and decision.delivers:
            # What the observe-only rules would have made of this message had they been
            # enforced: the same policy, with their actions and scores counted.
            simulated = self._outcome(
                [replace(v, mode=Mode.ENFORCE) for v in verdicts], all_verdicts
            )
            if simulated.action is not decision.action:
                intended, intended_rule = simulated.action, simulated.rule
        return Decision(
            decision.action,
            decision.score,
            decision.verdicts,
            rule=decision.rule,
            reason=decision.reason,
            text=decision.text,
            intended=intended,
            intended_rule=intended_rule,
            headers=self._headers(decision.action, score, all_verdicts),
        )

    def _outcome(self, voting: Sequence[Verdict], all_verdicts: tuple[Verdict, ...]) -> Decision:
        """Rules 1-3 of the module docstring over the verdicts that count."""
        score = sum(v.score for v in voting)
        forced = next((v for v in voting if v.forces), None)
        if forced is not None:
            return Decision(
                forced.action,  # type: ignore[arg-type]  # forces implies an action
                score,
                all_verdicts,
                rule=forced.rule,
                reason=forced.finding.reason,
                text=_render(forced),
            )
        reached = self.by_score(score)
        if reached is not None:
            action, threshold = reached
            return Decision(
                action,
                score,
                all_verdicts,
                reason=f"score {_score(score)} reached the {action.value} threshold "
                f"{_score(threshold)}",
            )
        tagger = next((v for v in voting if v.action is Action.TAG), None)
        if tagger is not None:
            return Decision(
                Action.TAG, score, all_verdicts, rule=tagger.rule, reason=tagger.finding.reason
            )
        return Decision(Action.ACCEPT, score, all_verdicts)

    def _headers(
        self, action: Action, score: float, verdicts: tuple[Verdict, ...]
    ) -> tuple[tuple[str, str], ...]:
        config = self.headers
        if action not in (Action.ACCEPT, Action.TAG, Action.WARN):
            return ()
        tagged = action is Action.TAG
        result = []
        if tagged and config.flag:
            result.append((config.flag, "YES"))
        if config.status and (
            config.add_status == "always" or (tagged and config.add_status == "tagged")
        ):
            rules = ", ".join(_shown(v) for v in verdicts if v.mode is Mode.ENFORCE) or "none"
            yes = "Yes" if tagged else "No"
            result.append((config.status, f"{yes}, score={_score(score)}, rules={rules}"))
        return tuple(result)


def _shown(verdict: Verdict) -> str:
    """``DNSBL(LISTED) [zen.spamhaus.org=127.0.0.4(+3) ... total=3]``: a finding's detail (each
    DNS list's answer and the total) is what a reader of the header needs to trust the tag."""
    if verdict.finding.detail:
        return f"{verdict.label} [{verdict.finding.detail}]"
    return verdict.label


def _render(verdict: Verdict) -> str | None:
    if verdict.text is None:
        return None
    return render_text(verdict.text, verdict.finding.groups, verdict.rule)
