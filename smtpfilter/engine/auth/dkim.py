"""DKIM verification (RFC 6376, RFC 8301, RFC 8463) with dkimpy, keys fetched by our resolver.

dkimpy does the cryptography and canonicalisation (it is the reference Python implementation,
maintained by Scott Kitterman, used by dkimpy-milter and Debian). Its ``verify()`` and
``asyncsupport.verify_async()`` return only True/False and swallow DNS errors, and the async one
imports aiodns (c-ares, with its own cache we cannot turn off). So we drive its three stable
building blocks ourselves (they exist precisely so the sync and async verifiers share code):

1. ``DKIM.verify_headerprep(idx)``: parse and validate one DKIM-Signature (tags, a=, t=, x=, i=).
2. The key: our cached, budgeted DNS lookup of ``<s>._domainkey.<d>`` TXT, then
   ``dkim.evaluate_pk()`` (RSA or Ed25519, s= service type).
3. ``DKIM.verify_sig_process()``: body hash and signature (CPU only, no I/O).

That gives each signature an RFC 8601 result instead of a boolean:

- pass; fail (signature or body hash does not verify);
- temperror (the key lookup failed: timeout, SERVFAIL);
- policy (it verifies, but ``l=`` leaves part of the body unsigned: RFC 6376 §8.2: anyone may
  append text to a genuinely signed message and keep its "pass" and its DMARC alignment;
  ``authentication.dkim.partial_body: pass`` makes it pass, as Mail::DKIM and dkimpy's own
  ``verify()`` do; go-msgauth refuses ``l=`` outright);
- permerror (malformed signature, no key, unusable key, key too short (RFC 8301 §3.2: < 1024
  bits), rsa-sha1 (RFC 8301 §3.1), key h= excludes the hash, key t=s with a subdomain i=);
- none (no DKIM-Signature at all).

Limits: at most ``max_signatures`` signatures are verified (RFC 6376 §6.1 lets verifiers limit
them; the rest are ignored and logged). Keys are fetched concurrently; the CPU part runs on the
event loop for small messages and in a worker thread above ``thread_above`` bytes, so a 20 MB
message does not stall every other session while its body is canonicalised.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from dataclasses import dataclass
from typing import Awaitable, Callable

from smtpfilter.engine.resolver import Lookup

__all__ = ["DkimOutcome", "DkimResult", "DkimSignature", "unstuff", "verify_message"]

log = logging.getLogger(__name__)
# dkimpy logs through the logger we hand it; keep its chatter under our name, at DEBUG.
_dkimpy_log = logging.getLogger(__name__ + ".dkimpy")

Query = Callable[[str, str], Awaitable[Lookup]]


class DkimResult(enum.StrEnum):
    """RFC 8601 §2.7.1 results for one signature (and for the message: see DkimOutcome)."""

    PASS = "pass"
    FAIL = "fail"
    NEUTRAL = "neutral"
    POLICY = "policy"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class DkimSignature:
    result: DkimResult
    domain: str  # d= ("" when the signature could not be parsed that far)
    selector: str  # s=
    reason: str  # why, for logs and the A-R comment
    identity: str = ""  # i=
    algorithm: str = ""  # a=
    b: str = ""  # the b= value without whitespace; A-R header.b takes a prefix (RFC 6008)
    key_bits: int = 0
    testing: bool = False  # key t=y: the domain is testing DKIM (RFC 6376 §3.6.1)
    body_length: int | None = None  # l= (a signature over part of the body: RFC 6376 §8.2)


# The message's result: pass if any signature passes, otherwise the first signature's result in
# this order (so a message with a broken and an unverifiable signature reads "fail").
_PRECEDENCE = (
    DkimResult.PASS,
    DkimResult.FAIL,
    DkimResult.PERMERROR,
    DkimResult.TEMPERROR,
    DkimResult.POLICY,
    DkimResult.NEUTRAL,
)


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    signatures: tuple[DkimSignature, ...] = ()
    ignored: int = 0  # signatures beyond max_signatures

    @property
    def result(self) -> DkimResult:
        found = {s.result for s in self.signatures}
        for result in _PRECEDENCE:
            if result in found:
                return result
        return DkimResult.NONE

    def passing_domains(self) -> list[str]:
        return [s.domain for s in self.signatures if s.result is DkimResult.PASS]

    def first(self, result: DkimResult) -> DkimSignature | None:
        return next((s for s in self.signatures if s.result is result), None)


def unstuff(data: bytes | bytearray) -> bytes:
    """Wire form (dot-stuffed, RFC 5321 §4.5.2) to message bytes, as the signer hashed them."""
    out = bytes(data).replace(b"\r\n..", b"\r\n.")
    return out[1:] if out.startswith(b"..") else out


_B_WHITESPACE = re.compile(rb"\s+")

# dkimpy's relaxed canonicalisation replaces every run of [\t ]+ by one space, including the
# ordinary single spaces between words: 40 ms per MB of text. Replacing only what changes (a TAB,
# or two or more blanks) gives the same bytes about 6x faster (tests/unit/test_auth.py checks the
# equivalence; worth offering upstream). Installed once, at import: dkimpy's canonicalisation
# functions look the name up in their module at each call (dkimpy 1.1.x, pinned in pyproject).
_RUNS = re.compile(rb"\t[\t ]*| [\t ]+")


def _compress_whitespace(content: bytes) -> bytes:
    return _RUNS.sub(b" ", content)


# dkimpy, imported by the first message with a DKIM-Signature: with PyNaCl and dnspython's
# resolver it costs about 0.2 s and several MB, which a filter without DKIM does not pay.
dkim = None


def _import_dkimpy() -> None:
    global dkim
    if dkim is None:
        import dkim.canonicalization  # binds the module-global name
        import dkim.util

        dkim.canonicalization.compress_whitespace = _compress_whitespace


class _Prepared:
    """One signature after header parsing: what to look up and what to verify."""

    __slots__ = ("index", "sig", "include", "header", "domain", "selector", "failure")

    def __init__(self, index: int) -> None:
        self.index = index
        self.sig: dict[bytes, bytes] = {}
        self.include: list[bytes] = []
        self.header: tuple[bytes, bytes] | None = None
        self.domain = ""
        self.selector = ""
        self.failure: DkimSignature | None = None


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace") if value else ""


def _prepare(verifier: dkim.DKIM, index: int, allow_sha1: bool) -> _Prepared:
    prepared = _Prepared(index)
    try:
        headerprep = verifier.verify_headerprep(index)
        if not headerprep:
            raise dkim.ValidationError("no such signature")
        sig, include, sigheaders = headerprep
    except dkim.DKIMException as error:
        raw = _raw_tags(verifier, index)
        prepared.failure = DkimSignature(
            DkimResult.PERMERROR, _text(raw.get(b"d")), _text(raw.get(b"s")),
            f"malformed signature: {error}",
        )
        return prepared
    prepared.sig, prepared.include, prepared.header = sig, include, sigheaders[index]
    prepared.domain = _text(sig[b"d"]).lower()
    prepared.selector = _text(sig[b"s"])
    if sig[b"a"] == b"rsa-sha1" and not allow_sha1:
        prepared.failure = _signature(prepared, DkimResult.PERMERROR,
                                      "rsa-sha1 is not acceptable (RFC 8301 §3.1)")
    elif not (prepared.domain.isascii() and prepared.selector.isascii()):
        prepared.failure = _signature(prepared, DkimResult.PERMERROR, "non-ASCII d= or s=")
    return prepared


def _raw_tags(verifier: dkim.DKIM, index: int) -> dict[bytes, bytes]:
    """Best-effort d=/s= of a signature that failed to parse, for the A-R header."""
    signatures = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    try:
        return dkim.util.parse_tag_value(signatures[index])
    except Exception:  # InvalidTagValueList, IndexError...: whatever it is, no d=/s= to show
        return {}


def _signature(p: _Prepared, result: DkimResult, reason: str, *, key_bits: int = 0,
               testing: bool = False) -> DkimSignature:
    sig = p.sig
    length = sig.get(b"l")
    return DkimSignature(
        result,
        p.domain,
        p.selector,
        reason,
        identity=_text(sig.get(b"i")),
        algorithm=_text(sig.get(b"a")),
        b=_text(_B_WHITESPACE.sub(b"", sig.get(b"b", b""))),
        key_bits=key_bits,
        testing=testing,
        body_length=int(length) if length and length.isdigit() else None,
    )


async def _fetch_key(p: _Prepared, query: Query) -> Lookup:
    return await query(f"{p.selector}._domainkey.{p.domain}", "TXT")


def _check_key(p: _Prepared, lookup: Lookup, min_key_bits: int):
    """(key tuple, testing) or a DkimSignature saying why the key is unusable."""
    name = f"{p.selector}._domainkey.{p.domain}"
    if lookup.error is not None:
        return _signature(p, DkimResult.TEMPERROR, f"key {name}: DNS {lookup.error}")
    if not lookup.records:
        return _signature(p, DkimResult.PERMERROR, f"no key at {name}")
    problem = "unusable key"
    for record in lookup.records:
        try:
            pk, keysize, ktag, seqtlsrpt = dkim.evaluate_pk(name, record.encode("utf-8"))
        except (dkim.DKIMException, ValueError, TypeError) as error:
            problem = f"key {name}: {error}"
            continue
        if pk is None:
            problem = f"key {name}: not for email (s= tag)"
            continue
        tags = dkim.util.parse_tag_value(record.encode("utf-8"))
        algorithm = p.sig[b"a"]
        if ktag == b"ed25519" and not algorithm.startswith(b"ed25519"):
            problem = f"key {name} is ed25519, signature is {algorithm.decode()}"
            continue
        if ktag == b"rsa" and not algorithm.startswith(b"rsa"):
            problem = f"key {name} is RSA, signature is {algorithm.decode()}"
            continue
        hashes = tags.get(b"h")
        if hashes is not None:
            allowed = {h.strip() for h in hashes.split(b":")}
            if algorithm.split(b"-")[-1] not in allowed:
                problem = f"key {name} h= does not allow {algorithm.decode()}"
                continue
        flags = {f.strip() for f in tags.get(b"t", b"").split(b":")}
        if b"s" in flags and b"i" in p.sig:
            domain = p.sig[b"i"].rpartition(b"@")[2].lower()
            if domain != p.sig[b"d"].lower():
                problem = f"key {name} has t=s but i= is a subdomain"
                continue
        if ktag == b"rsa" and keysize < min_key_bits:
            return _signature(p, DkimResult.PERMERROR,
                              f"key {name} has {keysize} bits, fewer than {min_key_bits} "
                              f"(RFC 8301 §3.2)", key_bits=keysize)
        return (pk, keysize, ktag, seqtlsrpt), b"y" in flags
    return _signature(p, DkimResult.PERMERROR, problem)


def _verify(verifier: dkim.DKIM, p: _Prepared, key: tuple, testing: bool,
            accept_partial_body: bool = False) -> DkimSignature:
    """The CPU part: body hash and signature. Never raises."""
    verifier.pk, verifier.keysize, verifier.ktag, verifier.seqtlsrpt = key
    try:
        ok = verifier.verify_sig_process(p.sig, list(p.include), p.header, None)
    except dkim.ValidationError as error:
        text = str(error)
        if text.startswith("body hash mismatch"):
            return _signature(p, DkimResult.FAIL, "body hash mismatch", key_bits=verifier.keysize,
                              testing=testing)
        return _signature(p, DkimResult.PERMERROR, text, key_bits=verifier.keysize)
    except (dkim.DKIMException, ValueError, TypeError, IndexError) as error:
        return _signature(p, DkimResult.PERMERROR, f"cannot verify: {error}",
                          key_bits=verifier.keysize)
    if ok:
        length = p.sig.get(b"l")
        if length is not None and not accept_partial_body:
            canon = dkim.canonicalization.CanonicalizationPolicy.from_c_value(
                p.sig.get(b"c", b"simple/simple")
            )
            full = len(canon.canonicalize_body(verifier.body))
            if int(length) < full:
                # RFC 6376 §8.2: content after l= is unsigned; anyone can append to a genuinely
                # signed message and keep the "pass" (and DMARC alignment). RFC 8601 "policy":
                # verified, but not acceptable to us. go-msgauth refuses l= outright.
                return _signature(p, DkimResult.POLICY,
                                  f"l={int(length)} signs {int(length)} of {full} body bytes "
                                  f"(RFC 6376 §8.2)", key_bits=verifier.keysize, testing=testing)
        return _signature(p, DkimResult.PASS, "signature verified", key_bits=verifier.keysize,
                          testing=testing)
    return _signature(p, DkimResult.FAIL, "signature did not verify", key_bits=verifier.keysize,
                      testing=testing)


def _parse(message: bytes) -> dkim.DKIM:
    return dkim.DKIM(message, logger=_dkimpy_log, minkey=0)


async def verify_message(
    data: bytes | bytearray,
    *,
    query: Query,
    signature_count: int | None = None,
    max_signatures: int = 5,
    min_key_bits: int = 1024,
    allow_sha1: bool = False,
    thread_above: int = 256 * 1024,
    accept_partial_body: bool = False,
) -> DkimOutcome:
    """Verify the DKIM-Signatures of ``data`` (wire form, dot-stuffed). Never raises for bad
    input or DNS.

    ``signature_count``, when the caller's header parser already counted DKIM-Signature fields,
    lets a message without any skip dkimpy's parse of the whole message.
    """
    if signature_count == 0:
        return DkimOutcome()
    _import_dkimpy()
    message = unstuff(data)
    big = len(message) > thread_above
    try:
        verifier = await asyncio.to_thread(_parse, message) if big else _parse(message)
    except (dkim.DKIMException, ValueError, IndexError) as error:
        # rfc822_parse refuses a header line without a colon, for example.
        reason = f"message cannot be parsed for DKIM: {error}"
        log.debug("%s", reason)
        count = signature_count or 1
        return DkimOutcome(tuple(
            DkimSignature(DkimResult.PERMERROR, "", "", reason) for _ in range(min(count, max_signatures))
        ))
    total = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    if total == 0:
        return DkimOutcome()
    prepared = [_prepare(verifier, index, allow_sha1) for index in range(min(total, max_signatures))]
    if total > max_signatures:
        log.debug("DKIM: %d signatures, verifying the first %d", total, max_signatures)
    pending = [p for p in prepared if p.failure is None]
    # Keys concurrently: one round trip for all signatures (and shared with other messages
    # through the cache).
    lookups = await asyncio.gather(*(_fetch_key(p, query) for p in pending))
    results: dict[int, DkimSignature] = {p.index: p.failure for p in prepared if p.failure}
    work = []
    for p, lookup in zip(pending, lookups):
        checked = _check_key(p, lookup, min_key_bits)
        if isinstance(checked, DkimSignature):
            results[p.index] = checked
        else:
            work.append((p, checked))
    if work:

        def verify_all() -> list[DkimSignature]:
            return [
                _verify(verifier, p, key, testing, accept_partial_body)
                for p, (key, testing) in work
            ]

        # The CPU part (canonicalisation, hashing, RSA) of a big message in a worker thread, so
        # the event loop keeps serving other sessions meanwhile.
        verified = await asyncio.to_thread(verify_all) if big else verify_all()
        for (p, _), signature in zip(work, verified):
            results[p.index] = signature
    signatures = tuple(results[p.index] for p in prepared)
    for signature in signatures:
        log.debug("DKIM d=%s s=%s: %s (%s)", signature.domain, signature.selector,
                  signature.result, signature.reason)
    return DkimOutcome(signatures, max(0, total - max_signatures))
