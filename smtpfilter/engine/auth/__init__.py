"""Sender authentication of one message: SPF, DKIM and DMARC, computed once, shared by all.

One :class:`Authenticator` serves the process (``RuleEnv.auth``, kept across reloads: it holds
the Public Suffix List, loaded on first use, and asks DNS through the process's cache). Per
message, each of the three results is computed at most once and kept in ``msg.memo``: the
``spf``, ``dkim`` and ``dmarc`` rule kinds and the Authentication-Results header
(engine/pipeline.py) all await the same tasks. SPF, the DKIM keys and the From: domain's DMARC
record are fetched concurrently, and beside the DNS lists, so a message costs about one round
trip per SPF include level, not the sum of all its lookups.

- SPF (RFC 7208, spf.py): our own asynchronous ``check_host()``. pyspf, the Python one, does its
  own synchronous DNS through a module-global resolver and has had no release since 2020.
- DKIM (RFC 6376, dkim.py): dkimpy, driven step by step so that key lookups go through our
  cache and each signature gets an RFC 8601 result (temperror included), not a boolean.
- DMARC (RFC 7489, dmarc.py): our own evaluator (``t=y`` honoured) with the Public Suffix List of
  ``publicsuffixlist`` for organisational domains.

Every DNS query goes through :class:`MessageDns`: the shared cache (coalescing, TTLs) underneath,
and per message a deadline (``authentication.timeout``) and a query budget, on top of RFC 7208's
own limits. Running out of either is a DNS error: temperror, never a hang. Nothing here raises
for bad input or DNS trouble; a bug of ours is logged and becomes temperror, and the rules decide.

No SPF and no DMARC for local submissions: mail without a client address (pickup/sendmail),
from loopback, or from a client that logged in (``Client.sasl_user``) has no remote client whose
right to send could be checked. DKIM is verified all the same. ARC (RFC 8617) is not evaluated
yet: it may come later, for mail through mailing lists that re-sign.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from smtpfilter.config.options import Options
from smtpfilter.config.settings import AuthenticationConfig
from smtpfilter.core import logline
from smtpfilter.core.message import Header, MessageContext
from smtpfilter.engine.auth.dkim import DkimOutcome, DkimResult, DkimSignature, verify_message
from smtpfilter.engine.auth.dmarc import (
    DmarcOutcome,
    DmarcResult,
    OrgDomains,
    evaluate,
    from_domains,
)
from smtpfilter.engine.auth.header import NAME, authentication_results, forged_in
from smtpfilter.engine.auth.spf import SpfOutcome, SpfResult, check_message, valid_domain
from smtpfilter.engine.resolver import Lookup

__all__ = [
    "NAME",
    "AuthResults",
    "Authenticator",
    "DkimResult",
    "DmarcResult",
    "MessageDns",
    "SpfResult",
    "read_results",
]

log = logging.getLogger(__name__)

Query = Callable[[str, str], Awaitable[Lookup]]

# DNS queries one message may ask for SPF, DKIM and DMARC together, cache hits included. SPF
# alone may legitimately take 10 terms, an MX term 10 more names, plus void lookups and the
# explanation: about 120 at worst; DKIM one per signature (5), DMARC two.
MAX_QUERIES = 150


class MessageDns:
    """One message's view of the shared cache: a deadline and a query budget."""

    def __init__(
        self,
        query: Query,
        *,
        timeout: float,
        max_queries: int = MAX_QUERIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._query = query
        self._clock = clock
        self.deadline = clock() + timeout
        self.max_queries = max_queries
        self.asked = 0

    async def query(self, name: str, rdtype: str) -> Lookup:
        self.asked += 1
        if self.asked > self.max_queries:
            return Lookup(name, rdtype, error=f"over {self.max_queries} DNS queries for one message")
        if not valid_domain(name):
            # A name DNS cannot carry (an empty label, a label over 63 octets, a DKIM selector
            # with a space): no such name, not a DNS failure to retry.
            return Lookup(name, rdtype, nxdomain=True)
        remaining = self.deadline - self._clock()
        if remaining <= 0:
            return Lookup(name, rdtype, error="authentication.timeout reached")
        try:
            # The cache shields its shared query: only this message stops waiting.
            async with asyncio.timeout(remaining):
                return await self._query(name, rdtype)
        except TimeoutError:
            return Lookup(name, rdtype, error="authentication.timeout reached")


@dataclass(frozen=True, slots=True)
class AuthResults:
    """The three results of one message; None: not checked (local submission)."""

    spf: SpfOutcome | None
    dkim: DkimOutcome | None
    dmarc: DmarcOutcome | None

    def header_value(self, authserv_id: str) -> str:
        """The value of our Authentication-Results header (RFC 8601)."""
        return authentication_results(authserv_id, self.spf, self.dkim, self.dmarc)


_MEMO = "auth"
_KINDS = ("spf", "dkim", "dmarc")


def is_local(msg: MessageContext) -> bool:
    """No remote client to check SPF and DMARC against (module docstring)."""
    client = msg.client
    if not client.addr or client.sasl_user:
        return True
    try:
        return ipaddress.ip_address(client.addr.strip()).is_loopback
    except ValueError:
        return False  # garbage: check_message says "none" and why


class Authenticator:
    """SPF, DKIM and DMARC for messages; one per process, configured at start and reload."""

    def __init__(
        self,
        query: Query,
        settings: AuthenticationConfig = AuthenticationConfig(),
        *,
        org: Callable[[str], str] | None = None,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self._query = query
        self.settings = settings
        self._org = org
        self._org_source = settings.psl_file
        self._sample = sample  # DMARC pct= sampling (tests fix it)

    def configure(self, settings: AuthenticationConfig) -> None:
        """New settings (start, SIGHUP); a different psl_file is read on next use."""
        self.settings = settings
        if settings.psl_file != self._org_source:
            self._org, self._org_source = None, settings.psl_file

    @property
    def org(self) -> Callable[[str], str]:
        if self._org is None:  # the PSL costs ~80 ms to load: only once DMARC is asked for
            self._org = OrgDomains(self.settings.psl_file)
        return self._org

    # --- per message -----------------------------------------------------------------------
    def _state(self, msg: MessageContext) -> dict:
        state = msg.memo.get(_MEMO)
        if state is None:
            # The settings of the message's first use hold for all of it, whatever a reload does.
            settings = self.settings
            state = {
                "settings": settings,
                "dns": MessageDns(self._query, timeout=settings.timeout),
            }
            msg.memo[_MEMO] = state
        return state  # type: ignore[return-value]

    def _task(self, msg: MessageContext, key: str) -> asyncio.Future:
        state = self._state(msg)
        task = state.get(key)
        if task is None:
            make = {"spf": self._spf, "dkim": self._dkim, "dmarc": self._dmarc}[key]
            task = asyncio.ensure_future(_guarded(key, make, msg, state))
            state[key] = task
        return task

    def begin(self, msg: MessageContext) -> None:
        """Start all three now (the header needs them), beside whatever else runs."""
        for key in _KINDS:
            self._task(msg, key)

    def finish(self, msg: MessageContext) -> None:
        """The message is decided: stop what still runs for it (its DNS queries go on in the
        cache for the next message)."""
        state = msg.memo.get(_MEMO)
        if state is None:
            return
        for key in _KINDS:
            task = state.get(key)
            if task is not None and not task.done():
                task.cancel()

    async def spf(self, msg: MessageContext) -> SpfOutcome | None:
        # Shielded: a rule cancelled by the pipeline does not cancel what others share.
        return await asyncio.shield(self._task(msg, "spf"))

    async def dkim(self, msg: MessageContext) -> DkimOutcome:
        return await asyncio.shield(self._task(msg, "dkim"))

    async def dmarc(self, msg: MessageContext) -> DmarcOutcome | None:
        return await asyncio.shield(self._task(msg, "dmarc"))

    async def results(self, msg: MessageContext) -> AuthResults:
        spf, dkim, dmarc = await asyncio.gather(self.spf(msg), self.dkim(msg), self.dmarc(msg))
        return AuthResults(spf, dkim, dmarc)

    @staticmethod
    def forged(msg: MessageContext, authserv_id: str | None) -> tuple[Header, ...]:
        """Incoming A-R fields that carry our authserv-id (RFC 8601 §5): to be cut out."""
        return forged_in(msg, authserv_id)

    # --- the three computations ---------------------------------------------------------------
    async def _spf(self, msg: MessageContext, state: dict) -> SpfOutcome | None:
        if is_local(msg):
            return None
        settings: AuthenticationConfig = state["settings"]
        outcome = await check_message(
            msg.client.addr, msg.client.helo, msg.mail_from, query=state["dns"].query,
            receiver=settings.authserv_id or "unknown",
        )
        if outcome is not None:
            log.debug("%s: SPF %s for %s %s: %s (%d DNS-querying terms, %d void)",
                      logline.queue_id(msg.client), outcome.result, outcome.identity,
                      outcome.sender or "-", outcome.reason, outcome.lookups,
                      outcome.void_lookups)
        return outcome

    async def _dkim(self, msg: MessageContext, state: dict) -> DkimOutcome:
        settings: AuthenticationConfig = state["settings"]
        headers = msg.headers
        count = None if headers.truncated else len(headers.get_all("dkim-signature"))
        return await verify_message(
            msg.data,
            query=state["dns"].query,
            signature_count=count,
            max_signatures=settings.dkim_max_signatures,
            min_key_bits=settings.dkim_min_key_bits,
            accept_partial_body=settings.dkim_partial_body == "pass",
        )

    async def _dmarc(self, msg: MessageContext, state: dict) -> DmarcOutcome | None:
        if is_local(msg):
            return None
        dns: MessageDns = state["dns"]
        from_values = [h.text for h in msg.headers.get_all("from")]
        # The From: domain's record is asked for while SPF and DKIM run: it lands in the shared
        # cache (or joins the same query in flight), where evaluate() then finds it.
        prefetch = [
            asyncio.ensure_future(dns.query(f"_dmarc.{domain}", "TXT"))
            for domain in from_domains(from_values)[:3]
        ]
        try:
            spf, dkim = await asyncio.gather(self.spf(msg), self.dkim(msg))
            await asyncio.gather(*prefetch)
        finally:
            for task in prefetch:
                task.cancel()
        org = self.org
        outcome = await evaluate(
            from_values, spf, dkim, query=dns.query, org=org, sample=self._sample
        )
        log.debug("%s: DMARC %s for %s: %s (p=%s, applied %s)", logline.queue_id(msg.client),
                  outcome.result, outcome.from_domain or "-", outcome.reason,
                  outcome.policy or "-", outcome.disposition or "-")
        return outcome


async def _guarded(kind: str, make: Callable[..., Awaitable], *args: object):
    """``make(*args)``, or a temperror when it fails in a way it should never fail (a bug of
    ours): logged, and the rules decide as for a DNS failure, rather than the message getting
    451. The coroutine is made here, inside the task: a task cancelled before its first step
    (the message was decided at once) then leaves no coroutine that was never awaited."""
    try:
        return await make(*args)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s evaluation failed; counted as temperror", kind.upper())
        reason = "internal error (logged)"
        if kind == "spf":
            return SpfOutcome(SpfResult.TEMPERROR, "mailfrom", "", "", reason)
        if kind == "dkim":
            return DkimOutcome((DkimSignature(DkimResult.TEMPERROR, "", "", reason),))
        return DmarcOutcome(DmarcResult.TEMPERROR, "", reason)


def read_results(
    opts: Options, key: str, allowed: Iterable[str], *, required: bool
) -> frozenset[str]:
    """A rule's list of RFC 8601 result words (``results: [fail, softfail]``), each checked."""
    allowed = tuple(allowed)
    values = opts.str_list(key, None, required=required) or []
    chosen = set()
    for value in values:
        word = str(value).strip().lower()
        if word not in allowed:
            opts.problem(key, f"{value!r} is not one of {', '.join(allowed)}")
            continue
        chosen.add(word)
    return frozenset(chosen)
