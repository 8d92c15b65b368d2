"""DMARC (RFC 7489): the From: domain's policy, and whether SPF or DKIM vouch for that domain.

Written here (about 250 lines) rather than taken from a package:

- ``dmarc`` (PyPI, pydmarc) parses records well but its relaxed alignment is a suffix test
  (``d=co.uk`` aligns with ``From: x@example.co.uk`` when no PSL is given, and the suffix test
  runs before the PSL one when it is), it does no record discovery (the caller must do the DNS
  and the organisational-domain fallback), ignores ``pct`` and reports results by raising
  exceptions.
- ``authheaders`` does discovery with its own synchronous dnspython calls and a PSL file of its
  own; ``checkdmarc`` is a domain-auditing tool (requests, many dependencies, its own DNS);
  ``parsedmarc`` handles reports only.

The organisational domain comes from the Public Suffix List through ``publicsuffixlist`` (its
PyPI releases embed the current list and are re-released as the list changes; ``psl_file`` can
point at Debian's /usr/share/publicsuffix/public_suffix_list.dat, updated by apt, instead).

Evaluation (RFC 7489 §6.6):

1. The RFC5322.From domain(s): none (no From:, or no domain in it) is ``none``; several
   different domains are each evaluated and the strictest outcome wins (§6.6.1).
2. Policy discovery (§6.6.3): ``_dmarc.<from domain>``, else ``_dmarc.<organisational domain>``.
   Exactly one record starting ``v=DMARC1`` counts; several, or none, mean no policy (``none``).
   A lookup error is ``temperror``.
3. A record with a bad or missing ``p=`` (or a bad ``sp=``) is ``permerror`` (RFC 7489 §11.2),
   unless it has a ``rua=`` address, in which case §6.6.3 says to act as if ``p=none``.
   Unknown tags are ignored; invalid optional values fall back to their defaults.
4. Alignment (§3.1): a passing DKIM signature's ``d=`` or the SPF-passed domain (MAIL FROM, or
   HELO for a null reverse-path) equal to the From domain (``adkim``/``aspf`` = s) or with the
   same organisational domain (r, the default).
5. pass if either aligns. Otherwise, if a check that could have aligned ended in temperror, the
   result is ``temperror`` (do not punish the sender for our DNS); else ``fail``.
6. On fail the policy is ``sp=`` when the record came from the organisational domain and the
   From domain is below it, else ``p=``; ``pct=`` < 100 samples: a message outside the sample
   gets the next milder policy (§6.6.4: reject -> quarantine -> none). ``t=y`` (RFC 9989's
   testing flag) does the same for every message.

Not implemented: reports (rua/ruf), ARC-based overrides, and RFC 9989's DNS tree walk (which
replaces the PSL; DMARCbis was published in 2026): discovery is one function to swap.
"""

from __future__ import annotations

import email.utils
import enum
import logging
import random
import re
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from smtpfilter.engine.resolver import Lookup
from smtpfilter.engine.auth.dkim import DkimOutcome, DkimResult
from smtpfilter.engine.auth.spf import SpfOutcome, SpfResult

__all__ = [
    "DmarcOutcome",
    "DmarcRecord",
    "DmarcResult",
    "OrgDomains",
    "evaluate",
    "from_domains",
    "parse_record",
]

log = logging.getLogger(__name__)

Query = Callable[[str, str], Awaitable[Lookup]]


class DmarcResult(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


_POLICIES = ("none", "quarantine", "reject")
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


class DmarcSyntaxError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    p: str
    sp: str | None = None
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    testing: bool = False  # t=y (RFC 9989)
    text: str = ""


_TAG = re.compile(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.S)


def parse_record(text: str) -> DmarcRecord:
    """RFC 7489 §6.3/§6.4 record; :class:`DmarcSyntaxError` when it cannot be used."""
    parts = [p for p in text.split(";")]
    if parts and not parts[-1].strip():
        parts.pop()  # a trailing ";"
    tags: dict[str, str] = {}
    for index, part in enumerate(parts):
        match = _TAG.match(part)
        if match is None:
            raise DmarcSyntaxError(f"bad tag {part.strip()[:40]!r}")
        name, value = match.group(1).lower(), match.group(2)
        if index == 0 and (name != "v" or value != "DMARC1"):
            raise DmarcSyntaxError("record must start with v=DMARC1")
        tags.setdefault(name, value)  # the first of a repeated tag counts
    rua = tags.get("rua", "")
    p = tags.get("p", "").lower()
    sp = tags.get("sp")
    problems = []
    if p not in _POLICIES:
        problems.append(f"p={tags.get('p', '')!r} is not none, quarantine or reject" if "p" in tags
                        else "no p= tag")
    if sp is not None and sp.lower() not in _POLICIES:
        problems.append(f"sp={sp!r} is not none, quarantine or reject")
    if problems:
        if any(uri.strip().lower().startswith("mailto:") for uri in rua.split(",")):
            # RFC 7489 §6.6.3 step 6: with a usable rua=, act as if p=none.
            log.debug('DMARC record "%s": %s; acting as p=none (it has rua=)', text, "; ".join(problems))
            p, sp = "none", None
        else:
            raise DmarcSyntaxError("; ".join(problems))
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(
        p=p,
        sp=sp.lower() if sp else None,
        adkim=adkim if adkim in ("r", "s") else "r",
        aspf=aspf if aspf in ("r", "s") else "r",
        pct=min(max(pct, 0), 100),
        testing=tags.get("t", "n").lower() == "y",
        text=text,
    )


class OrgDomains:
    """Organisational domains (RFC 7489 §3.2) from the Public Suffix List; built once per
    process (about 80 ms to load the list) and cached per name."""

    def __init__(self, psl_file: str | None = None) -> None:
        from publicsuffixlist import PublicSuffixList

        if psl_file:
            with open(psl_file, "rb") as source:
                self._psl = PublicSuffixList(source)
        else:
            self._psl = PublicSuffixList()

    def __call__(self, domain: str) -> str:
        domain = domain.lower().rstrip(".")
        # privatesuffix() is None for a public suffix itself ("co.uk"): it is its own org domain.
        return self._psl.privatesuffix(domain) or domain


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    result: DmarcResult
    from_domain: str
    reason: str
    policy: str = ""  # the published policy that applies (p= or sp=), "" without a record
    disposition: str = ""  # what to do after pct/t=y sampling: none | quarantine | reject
    record_domain: str = ""  # where the record was found
    org_domain: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    sampled_out: bool = False

    @property
    def strictness(self) -> int:
        if self.result is DmarcResult.FAIL:
            return 10 + _POLICIES.index(self.disposition or "none")
        return {DmarcResult.TEMPERROR: 3, DmarcResult.PERMERROR: 2, DmarcResult.NONE: 1}.get(
            self.result, 0
        )


def from_domains(values: Iterable[str]) -> list[str]:
    """The distinct domains of the From: header fields' addresses, lower case, A-labels."""
    domains: list[str] = []
    for _name, address in email.utils.getaddresses(list(values)):
        _local, at, domain = address.rpartition("@")
        domain = domain.strip().rstrip(".").lower()
        if not at or not domain:
            continue
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            continue
        if domain not in domains:
            domains.append(domain)
    return domains


async def _record(name: str, query: Query) -> tuple[str | None, str | None]:
    """(record text, None), (None, None) for no usable record, or (None, error)."""
    lookup = await query(f"_dmarc.{name}", "TXT")
    if lookup.error is not None:
        return None, lookup.error
    records = [r for r in lookup.records if r[:8] == "v=DMARC1" and (len(r) == 8 or r[8] in " ;\t")]
    if len(records) != 1:
        if len(records) > 1:
            log.debug("_dmarc.%s has %d DMARC records: no policy (RFC 7489 §6.6.3)", name, len(records))
        return None, None
    return records[0], None


def _aligned(domain: str, other: str, mode: str, org: Callable[[str], str]) -> bool:
    domain, other = domain.lower().rstrip("."), other.lower().rstrip(".")
    if not domain or not other:
        return False
    if domain == other:
        return True
    return mode == "r" and org(domain) == org(other)


async def _evaluate_one(
    from_domain: str,
    spf: SpfOutcome | None,
    dkim: DkimOutcome,
    query: Query,
    org: Callable[[str], str],
    sample: Callable[[], float],
) -> DmarcOutcome:
    org_domain = org(from_domain)
    text, error = await _record(from_domain, query)
    record_domain = from_domain
    if text is None and error is None and org_domain != from_domain:
        text, error = await _record(org_domain, query)
        record_domain = org_domain
    if error is not None:
        return DmarcOutcome(DmarcResult.TEMPERROR, from_domain, f"_dmarc.{record_domain}: DNS {error}",
                            org_domain=org_domain)
    if text is None:
        return DmarcOutcome(DmarcResult.NONE, from_domain, "no DMARC record", org_domain=org_domain)
    try:
        record = parse_record(text)
    except DmarcSyntaxError as problem:
        log.debug("DMARC record at _dmarc.%s is unusable: %s", record_domain, problem)
        return DmarcOutcome(DmarcResult.PERMERROR, from_domain, f"_dmarc.{record_domain}: {problem}",
                            record_domain=record_domain, org_domain=org_domain)
    policy = record.p
    if record_domain != from_domain and record.sp is not None:
        policy = record.sp  # §6.6.3: the org domain's sp= for its subdomains
    dkim_aligned = any(
        _aligned(from_domain, s.domain, record.adkim, org)
        for s in dkim.signatures
        if s.result is DkimResult.PASS
    )
    spf_aligned = bool(
        spf is not None and spf.result is SpfResult.PASS
        and _aligned(from_domain, spf.domain, record.aspf, org)
    )
    common = dict(policy=policy, record_domain=record_domain, org_domain=org_domain,
                  spf_aligned=spf_aligned, dkim_aligned=dkim_aligned)
    if spf_aligned or dkim_aligned:
        via = " and ".join(n for n, ok in (("DKIM", dkim_aligned), ("SPF", spf_aligned)) if ok)
        return DmarcOutcome(DmarcResult.PASS, from_domain, f"aligned {via}", disposition="none",
                            **common)
    # Could a check that failed for our reasons have aligned?
    uncertain = [
        f"DKIM d={s.domain}" for s in dkim.signatures
        if s.result is DkimResult.TEMPERROR and _aligned(from_domain, s.domain, record.adkim, org)
    ]
    if (
        spf is not None
        and spf.result is SpfResult.TEMPERROR
        and _aligned(from_domain, spf.domain, record.aspf, org)
    ):
        uncertain.append(f"SPF {spf.domain}")
    if uncertain:
        return DmarcOutcome(DmarcResult.TEMPERROR, from_domain,
                            f"no aligned pass; {', '.join(uncertain)} temperror", **common)
    disposition = policy
    sampled_out = False
    if record.testing:
        disposition, sampled_out = _MILDER[policy], True
    elif record.pct < 100 and sample() * 100 >= record.pct:
        disposition, sampled_out = _MILDER[policy], True
    return DmarcOutcome(DmarcResult.FAIL, from_domain, "no aligned SPF or DKIM pass",
                        disposition=disposition, sampled_out=sampled_out, **common)


async def evaluate(
    from_values: Iterable[str],
    spf: SpfOutcome | None,
    dkim: DkimOutcome,
    *,
    query: Query,
    org: Callable[[str], str],
    sample: Callable[[], float] = random.random,
    max_domains: int = 3,
) -> DmarcOutcome:
    """DMARC for the From: header field values ``from_values``. Never raises for bad input or DNS."""
    values = list(from_values)
    domains = from_domains(values)
    if not domains:
        reason = "no From: header" if not values else "no domain in From:"
        return DmarcOutcome(DmarcResult.NONE, "", reason)
    if len(domains) > max_domains:
        return DmarcOutcome(DmarcResult.PERMERROR, domains[0],
                            f"From: names {len(domains)} domains (at most {max_domains} evaluated)")
    outcomes = [await _evaluate_one(d, spf, dkim, query, org, sample) for d in domains]
    # RFC 7489 §6.6.1: with several author domains, the strictest outcome applies.
    return max(outcomes, key=lambda o: o.strictness)
