"""Run the rules of one RuleSet over one message and let the policy decide.

Rules run in file order. Checks that wait on the network are started together before the walk
begins, so five DNS lists cost one round trip, not five; the walk then takes their results in
order. The walk stops at the first verdict that forces an action (the rest cannot change the
outcome), unless ``observe_all`` asks for every rule's finding (``smtpfilter test``).

When a rule reads the body (``RuleSet.needs_body``), the MIME structure is walked once before
the first rule (engine/mime.py, shared through the message's memo), so the limits it reaches
are known to a ``limits`` rule wherever that rule stands; otherwise it is never walked.

Sender authentication (SPF, DKIM, DMARC: engine/auth/) is computed once per message whatever
asks for it: the spf, dkim and dmarc rules, and with ``authentication.authserv_id`` the
Authentication-Results header, whose computation starts with the DNS lists, before the walk.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable

from smtpfilter.core.errors import RuleFailure
from smtpfilter.core.message import MessageContext
from smtpfilter.core.verdict import Decision, Finding, Verdict
from smtpfilter.engine.mime import walk_message
from smtpfilter.engine.auth import Authenticator
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.rules import Rule, RuleSet

__all__ = ["RuleFailure", "conclude", "evaluate", "observe"]


async def observe(
    ruleset: RuleSet, msg: MessageContext, *, observe_all: bool = False
) -> list[tuple[Rule, Finding | None]]:
    """Each rule's finding, in order, up to the first forcing verdict (or all of them)."""
    if ruleset.needs_body:
        try:
            walk_message(msg, ruleset.mime)
        except Exception as error:  # never by design: blame the first rule that needs it
            first = next(r for r in ruleset.rules if getattr(r.check, "needs_body", False))
            raise RuleFailure(first) from error
    pending: dict[str, asyncio.Future[Finding | None]] = {}
    for rule in ruleset.rules:
        if rule.is_async:
            awaitable: Awaitable[Finding | None] = rule.check.observe(msg)  # type: ignore[assignment]
            pending[rule.name] = asyncio.ensure_future(awaitable)
    results: list[tuple[Rule, Finding | None]] = []
    try:
        for rule in ruleset.rules:
            try:
                if rule.is_async:
                    finding = await pending.pop(rule.name)
                else:
                    finding = rule.check.observe(msg)  # type: ignore[assignment]
            except asyncio.CancelledError:
                raise
            except Exception as error:
                raise RuleFailure(rule) from error
            results.append((rule, finding))
            if finding is not None and not observe_all and rule.verdict(finding).forces:
                break
    finally:
        for future in pending.values():
            if future.done():
                if not future.cancelled():
                    future.exception()  # retrieved: a result nobody needs is not an error
            else:
                future.cancel()
    return results


def verdicts_of(results: list[tuple[Rule, Finding | None]]) -> list[Verdict]:
    return [rule.verdict(finding) for rule, finding in results if finding is not None]


async def conclude(
    ruleset: RuleSet,
    msg: MessageContext,
    policy: Policy,
    results: list[tuple[Rule, Finding | None]],
) -> Decision:
    """The policy's Decision on these findings, with our Authentication-Results header when
    the config asks for one (the results the rules already awaited are not computed again)."""
    decision = policy.decide(verdicts_of(results))
    if policy.wants_authentication(decision):
        auth: Authenticator = ruleset.env.auth
        found = await auth.results(msg)
        value = found.header_value(policy.authserv_id)  # type: ignore[arg-type]
        decision = policy.authenticated(decision, value, auth.forged(msg, policy.authserv_id))
    return decision


async def evaluate(
    ruleset: RuleSet, msg: MessageContext, policy: Policy, *, observe_all: bool = False
) -> Decision:
    auth: Authenticator = ruleset.env.auth
    if policy.authserv_id is not None:
        auth.begin(msg)  # SPF, DKIM and DMARC start now, beside the DNS lists
    try:
        results = await observe(ruleset, msg, observe_all=observe_all)
        return await conclude(ruleset, msg, policy, results)
    finally:
        auth.finish(msg)  # decided (or timed out): what still runs for it stops
