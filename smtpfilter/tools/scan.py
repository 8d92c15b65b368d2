"""Replaying stored mail through the rules: ``smtpfilter scan`` and ``smtpfilter test``.

A stored message is not what the filter saw. Delivery added headers above it (Return-Path,
Delivered-To, the Received lines of the 10026 pass and of Dovecot's LMTP, and our own X-Spam-Flag
if it was tagged), and it is judged months later. So each message is first turned back into the
filter's view:

- The *trusted hop* is the Received header the admin's own Postfix added when the message
  arrived from outside (``--received-hop N``, counted from the top; by default the first one
  whose client is neither loopback nor an LMTP delivery). Everything above it is cut off, so the
  rules see the headers the filter saw, and a DNSBL rule's ``received_hop: 1`` means that same
  header, as it does on live mail.
- The client address comes from that header, read by the same parser as the dnsbl check's
  ``received_hop`` (:func:`smtpfilter.core.fields.received_address`), as XFORWARD ADDR would
  have given it.
- The receipt time is that header's date (after its ";", RFC 5322 §3.6.7), else the mailbox's
  delivery time (the Maildir file's time, as the ``mailbox`` module reads it; the mbox "From "
  line), else the file's modification time. Date rules measure age against it, not against
  today: otherwise every old message in a mailbox would be OLD_DATE.

Mailboxes are read with the standard library's ``mailbox`` module (Maildir, mbox) one message at
a time: an mbox is indexed once and never loaded whole.
"""

from __future__ import annotations

import asyncio
import ipaddress
import mailbox
import os
import re
import stat
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, BinaryIO, Callable, Iterator

from smtpfilter.core import replies, wire
from smtpfilter.core.envelope import Client, without_ipv6_prefix
from smtpfilter.core.fields import received_address, received_date
from smtpfilter.core.message import Header, HeaderBlock, MessageContext, parse_header_block
from smtpfilter.core.text import printable
from smtpfilter.core.verdict import Action, Decision, Finding
from smtpfilter.engine.checks.attachment import detection_of
from smtpfilter.engine.mime import MimeTree
from smtpfilter.engine.pipeline import conclude, observe
from smtpfilter.engine.policy import Policy
from smtpfilter.engine.rules import Rule, RuleSet

__all__ = [
    "Flagged",
    "Judged",
    "PartInfo",
    "Source",
    "Stored",
    "Summary",
    "View",
    "judge_all",
    "open_source",
    "read_stdin",
    "stored_view",
    "trusted_hop",
]

NOT_DELIVERED = (Action.REJECT, Action.DISCARD, Action.QUARANTINE, Action.TEMPFAIL)


# --- reading mailboxes -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stored:
    """One message as stored: where it is, its bytes, and when it was delivered if known."""

    label: str
    raw: bytes
    delivered_at: datetime | None = None
    delivered_by: str = ""  # what delivered_at is: "Maildir file time", "mbox From line"...
    error: str = ""  # why it could not be read: the message is skipped, and the scan says so


@dataclass
class Source:
    kind: str  # "Maildir", "mbox", "directory", "file", "stdin"
    path: Path
    count: int
    messages: Callable[[], Iterator[Stored]]
    close: Callable[[], None] = lambda: None
    # Entries of a directory that are not read at all: not *.eml (reported, not messages).
    ignored: tuple[Path, ...] = ()


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


_FROM_LINE_DATE = re.compile(
    r"([A-Z][a-z]{2}) +([A-Z][a-z]{2}) +(\d{1,2}) +(\d{1,2}):(\d{2}):(\d{2}) +(\d{4})"
)


def from_line_date(line: bytes) -> datetime | None:
    """The date of an mbox "From sender Mon Jan  1 10:00:00 2024" line (ctime, read as UTC)."""
    match = _FROM_LINE_DATE.search(line.decode("ascii", "replace"))
    if match is None:
        return None
    try:
        moment = datetime.strptime(" ".join(match.groups()[1:3]) + " " + match.group(7)
                                   + " " + ":".join(match.groups()[3:6]), "%b %d %Y %H:%M:%S")
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc)


def _maildir(path: Path) -> Source:
    box = mailbox.Maildir(path, factory=None, create=False)
    keys = sorted(box.keys())

    def messages() -> Iterator[Stored]:
        for key in keys:
            # mailbox dates a Maildir message by its file's mtime (Maildir.get_message does);
            # it has no public way to get the file without parsing the message, hence _lookup.
            try:
                sub = box._lookup(key)  # noqa: SLF001
                raw = box.get_bytes(key)
            except KeyError:
                yield Stored(str(path / key), b"", error="gone while scanning (a mail reader "
                             "moved or deleted it)")
                continue
            except OSError as error:
                yield Stored(str(path / sub), b"", error=_reason(error))
                continue
            try:
                delivered = _utc(os.path.getmtime(path / sub))
            except OSError:
                delivered = None
            yield Stored(str(path / sub), raw, delivered, "Maildir file time")

    return Source("Maildir", path, len(keys), messages)


def _mbox(path: Path) -> Source:
    box = mailbox.mbox(path, factory=None, create=False)
    keys = box.keys()  # builds the table of contents: offsets only, no message in memory

    def messages() -> Iterator[Stored]:
        for number, key in enumerate(keys, start=1):
            data = box.get_bytes(key, from_=True)
            first, _, raw = data.partition(b"\n")
            yield Stored(f"{path}#{number}", raw, from_line_date(first), "mbox From line")

    return Source("mbox", path, len(keys), messages, box.close)


def _stored(label: str, raw: bytes, delivered: datetime | None, by: str) -> Stored:
    """A message file's bytes, less an mbox "From " line, which then dates the delivery."""
    if raw.startswith(b"From "):
        first, _, raw = raw.partition(b"\n")
        if (line_date := from_line_date(first)) is not None:
            delivered, by = line_date, "mbox From line"
    return Stored(label, raw, delivered, by)


def _read_file(path: Path) -> Stored:
    try:
        # stat first: a FIFO in a mail folder would block the read for ever.
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            return Stored(str(path), b"", error="a directory, not a message file")
        if not stat.S_ISREG(info.st_mode):
            return Stored(str(path), b"", error="not a regular file")
        raw = path.read_bytes()
    except OSError as error:
        reason = _reason(error)
        if isinstance(error, FileNotFoundError) and path.is_symlink():
            reason += " (a symbolic link to nothing)"
        return Stored(str(path), b"", error=reason)
    return _stored(str(path), raw, _utc(info.st_mtime), "file time")


def _files(paths: list[Path], kind: str, root: Path, ignored: tuple[Path, ...] = ()) -> Source:
    def messages() -> Iterator[Stored]:
        for path in paths:
            yield _read_file(path)

    return Source(kind, root, len(paths), messages, ignored=ignored)


def read_stdin(stream: BinaryIO) -> Source:
    """``smtpfilter test -``: one message on standard input, received now unless its
    Received: header or an mbox "From " line says when."""
    raw = stream.read()
    stored = _stored("-", raw, None, "")
    return Source("stdin", Path("-"), 1, lambda: iter([stored]))


# A Maildir's own folders hold messages under names without a suffix (maildir(5)): given
# directly, every file in them is a message.
MAILDIR_FOLDERS = ("new", "cur")


def _directory(path: Path) -> Source:
    if (path / "cur").is_dir() and (path / "new").is_dir():
        return _maildir(path)
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    if path.name in MAILDIR_FOLDERS:
        return _files(entries, "Maildir folder", path)
    found = [p for p in entries if p.suffix == ".eml"]
    ignored = tuple(p for p in entries if p.suffix != ".eml")
    return _files(found, "directory", path, ignored)


def open_source(path: Path) -> Source:
    """A Maildir (cur/ new/ tmp/) or one of its new/ and cur/ folders, a directory of *.eml,
    an mbox, or one message file."""
    if path.is_dir():
        return _directory(path)
    with path.open("rb") as handle:
        head = handle.read(5)
    if head == b"From ":
        with path.open("rb") as handle:
            text = handle.read(1 << 16)
        if text.count(b"\nFrom ") > 0 or path.suffix != ".eml":
            return _mbox(path)
    return _files([path], "file", path)


# --- the filter's view of a stored message ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class View:
    msg: MessageContext
    received_by: str  # where received_at came from
    hop: int | None  # the trusted Received header, 1 = topmost
    cut: int  # header fields above it that were left out
    warning: str = ""  # the asked-for hop is not there (more hops asked than Received: headers)


def _is_delivery_hop(header: Header) -> bool:
    return re.search(r"\bwith\s+LMTP", header.text, re.I) is not None


def trusted_hop(headers: HeaderBlock) -> int | None:
    """The first Received header (from the top) naming a client that is not loopback, skipping
    LMTP deliveries: the one the admin's own Postfix added when the message came in."""
    for number, header in enumerate(headers.get_all("received"), start=1):
        if _is_delivery_hop(header):
            continue
        address = received_address(headers, number)
        if address is None:
            continue
        try:
            ip = ipaddress.ip_address(without_ipv6_prefix(address))
        except ValueError:
            continue
        if not ip.is_loopback:
            return number
    return None


def _return_path(headers: HeaderBlock) -> str:
    """The envelope sender, as the delivery agent recorded it (RFC 5321 §4.4)."""
    found = headers.get_all("return-path")
    return found[0].text.strip().strip("<>") if found else ""


def stored_view(
    stored: Stored,
    *,
    hop: int | str | None = "auto",
    client_ip: str | None = None,
    header_limit: int = 1 << 20,
    now: datetime | None = None,
) -> View:
    """The message as the filter would have seen it, with the time it would have judged it.

    ``hop``: "auto" (see :func:`trusted_hop`), a number, or 0/None to take the message as it
    is, judged now (the README's promise for ``--received-hop 0``: no header and no file date
    is trusted then). A number beyond the Received: headers is said in ``View.warning``, and
    the message is judged as it is, as of its delivery time.
    """
    data = wire.to_wire(stored.raw)
    headers = parse_header_block(data, header_limit)
    sender = _return_path(headers)
    number = trusted_hop(headers) if hop == "auto" else (hop or None)
    received = headers.get_all("received")
    cut = 0
    received_at, received_by = None, ""
    address = client_ip
    warning = ""
    if number is not None and number <= len(received):
        trusted = received[number - 1]
        cut = headers.headers.index(trusted)
        data = data[trusted.start :]
        headers = parse_header_block(data, header_limit)
        received_at = received_date(headers.get_all("received")[0])
        received_by = f"Received #{number}"
        if address is None:
            address = received_address(headers, 1)
    elif number is not None:
        warning = (f"--received-hop {number}, but the message has {len(received)} Received: "
                   f"header{'s' if len(received) != 1 else ''}; judged as it is, without a "
                   f"client address from a header")
        number = None
    if hop in (0, None):
        received_at, received_by = now or datetime.now(timezone.utc), "now"
    if received_at is None and stored.delivered_at is not None:
        received_at, received_by = stored.delivered_at, stored.delivered_by
    if received_at is None:
        received_at, received_by = now or datetime.now(timezone.utc), "now"
    client = Client()
    if address:
        address = without_ipv6_prefix(address)
        client = Client(addr=address, name="unknown")
    msg = MessageContext(
        received_at=received_at,
        mail_from=sender,
        rcpt_to=(),
        client=client,
        data=data,
        headers=headers,
        size=len(data),
    )
    return View(msg, received_by, number, cut, warning)


# --- judging ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Flagged:
    """A message that would not be delivered, reduced to what the report shows."""

    label: str
    date: str
    sender: str
    subject: str
    action: str  # what happens (accept under dry_run / mode: warn)
    intended: str  # what the rules asked for
    rule: str
    rules: str
    reply: str
    details: tuple[str, ...] = ()  # part-level findings: which part, its name, its type


# Rule kinds whose findings are about one MIME part (their reasons name it).
PART_KINDS = frozenset({"attachment", "body", "mime_header"})


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One attachment as the rules saw it: MIME path, name, declared and detected type."""

    path: str  # "2", "3.1.2" (IMAP numbering; "0" the message itself)
    name: str
    declared: str
    detected: str  # "pe: Windows PE exe", "zip", "" when nothing known
    families: tuple[str, ...] = ()
    members: int = 0  # zip members listed


@dataclass(frozen=True, slots=True)
class Judged:
    label: str
    view: View | None
    results: list[tuple[Rule, Finding | None]]
    decision: Decision | None
    reply: str
    error: str = ""
    parts: tuple[PartInfo, ...] = ()  # attachments, when a rule read the MIME structure

    def flagged(self) -> Flagged:
        assert self.decision is not None and self.view is not None
        headers = self.view.msg.headers
        decision = self.decision
        intended = decision.intended or decision.action
        return Flagged(
            self.label,
            _first(headers, "date"),
            _first(headers, "from"),
            _first(headers, "subject"),
            decision.action.value,
            intended.value,
            decision.rule or decision.intended_rule or "score",
            decision.rules_hit,
            self.reply,
            tuple(f"{rule.name}: {printable(finding.reason)[:300]}"
                  for rule, finding in self.results
                  if finding is not None and rule.kind in PART_KINDS),
        )


def _first(headers: HeaderBlock, name: str) -> str:
    found = headers.get_all(name)
    if not found:
        return ""
    value = found[0].decoded
    return printable(value)[:200]


async def judge(
    ruleset: RuleSet, policy: Policy, stored: Stored, **view_options
) -> Judged:
    if stored.error:
        return Judged(stored.label, None, [], None, "", stored.error)
    try:
        view = stored_view(stored, **view_options)
        results = await observe(ruleset, view.msg, observe_all=True)
        parts = attachments_of(view.msg, ruleset)
    except Exception as error:  # one broken message must not end a scan of thousands
        return Judged(stored.label, None, [], None, "", f"{type(error).__name__}: {error}")
    decision = await conclude(ruleset, view.msg, policy, results)
    reply = replies.for_decision(decision) or "(delivered: 10026's reply to '.' is relayed)"
    return Judged(stored.label, view, results, decision, reply, parts=parts)


def attachments_of(msg: MessageContext, ruleset: RuleSet) -> tuple[PartInfo, ...]:
    """The attachments of a message whose MIME structure a rule read, each with its detected
    type (the rules' own detection when one ran, else one made now: it is cheap, the first
    36 KB and a zip's directory)."""
    tree = msg.memo.get("mime")
    if not isinstance(tree, MimeTree):
        return ()
    found = []
    for part in tree.attachments():
        detection = detection_of(msg, part, False, ruleset.mime)
        kind = detection.type
        found.append(PartInfo(
            part.path or "0",
            part.names[0] if part.names else "",
            part.ctype,
            (kind.name + (f": {kind.detail}" if kind.detail else "")) if kind else "",
            tuple(sorted(detection.families)),
            len(detection.members) or (len(detection.listing.entries) if detection.listing else 0),
        ))
    return tuple(found)


async def judge_all(
    ruleset: RuleSet,
    policy: Policy,
    messages: Iterator[Stored],
    *,
    concurrency: int = 16,
    **view_options,
) -> AsyncIterator[Judged]:
    """Judge messages in order, several at a time (DNS lookups overlap), in bounded memory."""
    pending: deque[asyncio.Future[Judged]] = deque()
    try:
        for stored in messages:
            pending.append(asyncio.ensure_future(judge(ruleset, policy, stored, **view_options)))
            if len(pending) >= concurrency:
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


# --- the summary -----------------------------------------------------------------------------
@dataclass
class Summary:
    messages: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why) not judged
    decisions: Counter = field(default_factory=Counter)
    would: Counter = field(default_factory=Counter)  # observe-only outcomes (mode: warn, dry_run)
    hits: Counter = field(default_factory=Counter)  # messages with a finding, per rule
    decided: Counter = field(default_factory=Counter)  # messages whose decision a rule made
    would_decide: Counter = field(default_factory=Counter)  # ...would have made, if enforced
    flagged: list[Flagged] = field(default_factory=list)  # not delivered
    # delivered, but an observe-only rule (mode: warn, dry_run) would have stopped it
    would_flagged: list[Flagged] = field(default_factory=list)
    received_by: Counter = field(default_factory=Counter)
    hop_missing: list[tuple[str, str]] = field(default_factory=list)  # (file, View.warning)

    def add(self, judged: Judged) -> None:
        if judged.decision is None:
            self.skipped.append((judged.label, judged.error))
            return
        self.messages += 1
        decision = judged.decision
        self.decisions[decision.action.value] += 1
        observed = decision.intended is not None and decision.intended is not decision.action
        if observed:
            self.would[decision.intended.value] += 1
            if decision.intended_rule:
                self.would_decide[decision.intended_rule] += 1
        for rule, finding in judged.results:
            if finding is not None:
                self.hits[rule.name] += 1
        # Under dry_run the decision keeps the rule that would have decided: not a decision.
        if decision.rule and not (observed and decision.rule == decision.intended_rule):
            self.decided[decision.rule] += 1
        assert judged.view is not None
        self.received_by[judged.view.received_by.split(" #")[0]] += 1
        if judged.view.warning:
            self.hop_missing.append((judged.label, judged.view.warning))
        if decision.action in NOT_DELIVERED:
            self.flagged.append(judged.flagged())
        elif decision.intended in NOT_DELIVERED:
            self.would_flagged.append(judged.flagged())
