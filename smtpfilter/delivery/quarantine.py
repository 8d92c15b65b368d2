"""Quarantine: messages kept aside in a Maildir until an admin releases or deletes them.

``action: quarantine`` is Postfix's HOLD for the content filter: the message is stored, Postfix
gets 250 and forgets it, and nothing reaches 10026 until ``smtpfilter quarantine release ID``
re-injects it with its original envelope (as ``postsuper -H`` releases held mail). It is the
answer for an admin unsure whether to reject or discard: nothing bounces, nothing is lost.

Layout of ``quarantine.directory`` (a Maildir, so ``mutt -f DIR`` can read it)::

    tmp/ID         being written
    new/ID         the message, as received (LF line ends, not dot-stuffed: Maildir form)
    cur/ID:2,S     ...the same after a mail reader has seen it
    meta/ID.json   envelope (MAIL FROM, RCPT TO and their parameters, XFORWARD attributes),
                   verdict (rule, reason, score), queue id, receipt time, SHA-256 of the bytes

Storing is atomic in the Maildir way (maildir(5), D. J. Bernstein's "Using maildir format"):
write under tmp/, fsync, rename into place, fsync the directory. The metadata goes first and the
message's rename into new/ is the commit point: a crash before it leaves no message (Postfix
still has it: we have not answered 250), a crash after it leaves a complete entry. Only then is
250 sent; any failure is 451 and Postfix keeps the message. A crash between the fsync and the 250
leaves a copy here that Postfix will offer again: a duplicate, never a loss.

Release sends exactly the bytes we received (less incoming copies of our own verdict headers and
Authentication-Results naming our authserv-id, which delivery strips too), verified against the
stored SHA-256, so an edited file is refused; the headers the decision added (our
Authentication-Results, computed at receipt) are kept in the metadata and go on top.
The file I/O is blocking; the filter runs it in a thread (``asyncio.to_thread``) so a large
message never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from smtpfilter.config.settings import Config
from smtpfilter.core import logline, replies, wire
from smtpfilter.core.envelope import Envelope, Recipient
from smtpfilter.core.errors import QuarantineError
from smtpfilter.core.message import MessageContext, parse_header_block
from smtpfilter.core.verdict import Decision
from smtpfilter.core.wire import outgoing
from smtpfilter.delivery.deliver import deliver
from smtpfilter.delivery.downstream import DownstreamPool
from smtpfilter.engine.auth.header import forged_in

__all__ = [
    "Entry",
    "Quarantine",
    "QuarantineError",
    "ReleaseResult",
    "envelope_meta",
    "json_text",
    "release",
    "store_message",
]

log = logging.getLogger(__name__)

META_VERSION = 1
_SUBDIRS = ("tmp", "new", "cur", "meta")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    path: Path  # the message file, in new/ or cur/
    meta: dict[str, Any]

    @property
    def envelope(self) -> dict[str, Any]:
        return self.meta.get("envelope", {})

    @property
    def verdict(self) -> dict[str, Any]:
        return self.meta.get("verdict", {})


def _unique_name() -> str:
    """A Maildir file name: time.MusecPpidQn.host (maildir(5)); "/" and ":" in the host
    name are escaped as the spec asks, so the name never holds a path or info separator."""
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"


def json_text(value: Any) -> str:
    """``value`` as JSON text that strict UTF-8 can encode, whatever bytes the envelope holds.

    Envelope values are client data decoded with surrogateescape (aiosmtpd decodes command
    arguments so, and Postfix passes 8-bit MAIL FROM, RCPT TO and XFORWARD values on as they
    came when smtputf8_enable = no): a byte that is not UTF-8 is a lone surrogate U+DC80..U+DCFF,
    which UTF-8 cannot encode. It is written as the JSON escape ``\\udcNN``, which json.loads
    turns back into the same character: the file stays UTF-8 and a release sends the very bytes
    received. (Refusing to store it answered 451 until Postfix bounced the message after
    maximal_queue_lifetime.)
    """
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _json_bytes(meta: dict[str, Any]) -> bytes:
    return json_text(meta).encode("utf-8") + b"\n"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(tmp: Path, final: Path, data: bytes) -> None:
    """tmp → fsync → rename → fsync(directory): the file is complete under ``final`` or absent."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


class Quarantine:
    """One quarantine directory. Every method is blocking file I/O: call it off the loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _prepare(self) -> None:
        for name in _SUBDIRS:
            (self.directory / name).mkdir(mode=0o700, parents=True, exist_ok=True)

    # --- store ---------------------------------------------------------------------------
    def store(self, data: bytes | bytearray, meta: dict[str, Any]) -> str:
        """Keep ``data`` (wire form: CRLF, dot-stuffed) with ``meta``; return its id.

        Raises QuarantineError when anything fails; nothing is left behind then.
        """
        entry_id = _unique_name()
        data = bytes(data)
        content = wire.from_wire(data).replace(b"\r\n", b"\n")
        form = "maildir"
        if wire.to_wire(content) != data:
            # Only for wire data no Postfix sends (a line with one unstuffed leading dot): keep
            # the bytes as they came, so release can still send exactly them.
            content, form = data, "wire"
        meta = dict(meta, id=entry_id, version=META_VERSION, form=form, size=len(data),
                    sha256=hashlib.sha256(data).hexdigest())
        meta_bytes = _json_bytes(meta)
        meta_path = self.directory / "meta" / f"{entry_id}.json"
        try:
            self._prepare()
            _write_durably(self.directory / "tmp" / f"{entry_id}.json", meta_path, meta_bytes)
            try:
                _write_durably(
                    self.directory / "tmp" / entry_id, self.directory / "new" / entry_id, content
                )
            except BaseException:
                meta_path.unlink(missing_ok=True)
                raise
        except OSError as error:
            raise QuarantineError(
                f"cannot store in {self.directory}: {error.strerror or error}"
                + (f" ({error.filename})" if error.filename else "")
            ) from error
        return entry_id

    # --- read ----------------------------------------------------------------------------
    def _message_files(self) -> Iterator[tuple[str, Path]]:
        for sub in ("new", "cur"):
            folder = self.directory / sub
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                continue
            except OSError as error:
                raise QuarantineError(f"cannot read {folder}: {error.strerror}") from error
            for name in names:
                if not name.startswith("."):
                    yield name.split(":", 1)[0], folder / name  # "ID:2,S" after a reader saw it

    def _meta(self, entry_id: str) -> dict[str, Any]:
        path = self.directory / "meta" / f"{entry_id}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}  # a message put here by hand: listable, not releasable
        except (OSError, ValueError) as error:
            raise QuarantineError(f"{path}: unreadable metadata ({error})") from error

    def entries(self) -> list[Entry]:
        """Every stored message, oldest first."""
        found = [Entry(i, p, self._meta(i)) for i, p in self._message_files()]
        return sorted(found, key=lambda e: (e.meta.get("received_at", ""), e.id))

    def get(self, entry_id: str) -> Entry:
        if not entry_id or "/" in entry_id or entry_id.startswith("."):
            raise QuarantineError(f"{entry_id!r} is not a quarantine id")
        for found_id, path in self._message_files():
            if found_id == entry_id:
                return Entry(found_id, path, self._meta(found_id))
        raise QuarantineError(f"no message {entry_id} in {self.directory}")

    def wire_bytes(self, entry: Entry) -> bytes:
        """The message exactly as it was received, checked against the stored SHA-256."""
        stored = entry.path.read_bytes()
        data = stored if entry.meta.get("form") == "wire" else wire.to_wire(stored)
        expected = entry.meta.get("sha256")
        if expected is None:
            raise QuarantineError(f"{entry.id}: no metadata; cannot release it with its envelope")
        if hashlib.sha256(data).hexdigest() != expected:
            raise QuarantineError(
                f"{entry.id}: {entry.path} differs from what was received (SHA-256 mismatch); "
                f"not releasing an altered message"
            )
        return data

    def header_block(self, entry: Entry, limit: int = 1 << 16):
        with entry.path.open("rb") as handle:
            head = handle.read(limit)
        return parse_header_block(wire.to_wire(head), limit * 2)

    # --- change --------------------------------------------------------------------------
    def remove(self, entry: Entry) -> None:
        entry.path.unlink(missing_ok=True)
        (self.directory / "meta" / f"{entry.id}.json").unlink(missing_ok=True)

    def update_meta(self, entry: Entry, meta: dict[str, Any]) -> None:
        meta_bytes = _json_bytes(meta)
        final = self.directory / "meta" / f"{entry.id}.json"
        tmp = self.directory / "tmp" / f"{entry.id}.{next(_counter)}.json"
        _write_durably(tmp, final, meta_bytes)


def check_directory(directory: Path) -> str | None:
    """Why a message could not be stored in ``directory`` by this user now, or None.

    Creates nothing: check-config run as root must not leave a root-owned directory that the
    filter's own user then cannot write to."""
    directory = Path(directory)
    if directory.exists():
        for path in [directory, *(directory / name for name in _SUBDIRS)]:
            if path.exists() and not path.is_dir():
                return f"{path} is not a directory"
            if path.exists() and not os.access(path, os.W_OK | os.X_OK):
                return f"{path} is not writable"
        return None
    parent = directory.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{directory} does not exist and {parent} is not a writable directory"
    return None


# --- the filter's side -----------------------------------------------------------------------
def envelope_meta(envelope: Envelope) -> dict[str, Any]:
    """What release needs to re-inject the message as it was handed to us (JSON)."""
    return {
        "mail_from": envelope.mail_path,
        "mail_params": dict(envelope.mail_params),  # keyword → token as received (SIZE=...)
        "recipients": [
            {"address": r.address, "path": r.path, "params": list(r.params)}
            for r in envelope.recipients
        ],
        "xforward": dict(envelope.xforward),
    }


def _envelope_from_meta(meta: dict[str, Any]) -> Envelope:
    """The stored envelope (envelope_meta) back as an Envelope; ``mail_from`` is the path."""
    return Envelope(
        mail_from=meta["mail_from"],
        mail_path=meta["mail_from"],
        mail_params=dict(meta["mail_params"]),
        recipients=[
            Recipient(r["address"], r["path"], list(r["params"])) for r in meta["recipients"]
        ],
        xforward=dict(meta.get("xforward", {})),
    )


def verdict_of(decision: Decision) -> dict[str, Any]:
    return {
        "action": decision.action.value,
        "rule": decision.rule,
        "reason": decision.reason,
        "score": decision.score,
        "rules": [v.label for v in decision.verdicts],
    }


async def store_message(
    config: Config, msg: MessageContext, envelope: Envelope, decision: Decision
) -> str:
    """Store the message for a QUARANTINE decision; the reply for Postfix (250 or 451)."""
    meta = {
        "received_at": msg.received_at.isoformat(),
        "queue_id": msg.client.ident,
        "client": msg.client.describe(),
        "envelope": envelope_meta(envelope),
        "verdict": verdict_of(decision),
    }
    if decision.headers:  # our Authentication-Results, as judged at receipt: added on release
        meta["headers"] = [list(header) for header in decision.headers]
    store = Quarantine(config.quarantine.directory)
    try:
        # Copied in the thread; a milter's content (not dot-stuffed) is stuffed there too.
        entry_id = await asyncio.to_thread(
            lambda: store.store(msg.data if msg.stuffed else wire.to_wire(msg.data), meta)
        )
    except QuarantineError as error:
        # Logged as what Postfix was told (the summary line then says action=quarantine,
        # status=deferred (451 ...)): never as a stored message.
        reply = replies.R451_QUARANTINE_FAILED
        log.error("%s: quarantine failed (%s); deferred (%s)", logline.queue_id(msg.client),
                  error, logline.reply_shown(reply), extra=logline.PER_MESSAGE)
        return reply
    return replies.quarantined(decision.rule or "score", entry_id)


# --- release -------------------------------------------------------------------------------
@dataclass
class ReleaseResult:
    entry: Entry
    delivered: list[str] = field(default_factory=list)  # recipients 10026 accepted
    refused: list[tuple[str, str]] = field(default_factory=list)  # (recipient, reply)
    reply: str = ""  # 10026's reply to "." (or the failure)
    removed: bool = False


async def release(config: Config, entry_id: str) -> ReleaseResult:
    """Re-inject one quarantined message into 10026 with its original envelope and bytes.

    Removed only when 10026 accepted it for every recipient. When it accepted some, the entry
    stays with only the refused recipients left in its envelope (a second release must not
    deliver twice); when it refused the message, the entry stays as it was.
    """
    store = Quarantine(config.quarantine.directory)
    entry = await asyncio.to_thread(store.get, entry_id)
    data = await asyncio.to_thread(store.wire_bytes, entry)
    stored = entry.envelope
    envelope = _envelope_from_meta(stored)
    result = ReleaseResult(entry)
    msg = MessageContext.build(data, received_at=datetime.now(timezone.utc))
    added = tuple((str(name), str(value)) for name, value in entry.meta.get("headers", ()))
    parts = outgoing(
        msg, added, *config.headers.incoming(added),
        drop=forged_in(msg, config.authentication.authserv_id),
    )
    sent = await deliver(DownstreamPool.for_config(config, keep_idle=False), envelope, parts)
    result.refused = [(rcpt.address, str(answer)) for rcpt, answer in sent.refused]
    if sent.error is not None:
        result.reply = f"10026 failed at {sent.error}"
        if sent.error.sent_data:
            result.reply += " after the final '.': it may have queued the message"
        return result
    if sent.smtputf8_unsupported:
        result.reply = "10026 failed at MAIL: SMTPUTF8 mail but 10026 does not announce SMTPUTF8"
        return result
    assert sent.reply is not None  # every stage but a failure leaves 10026's reply
    if sent.stage == "MAIL":
        result.reply = f"MAIL refused: {sent.reply}"
        return result
    if sent.stage == "RCPT":
        result.reply = "every recipient refused"
        return result
    result.reply = str(sent.reply)
    if not sent.delivered:
        result.refused = [(rcpt.address, str(sent.reply)) for rcpt in envelope.recipients]
        return result
    result.delivered = [rcpt.address for rcpt in sent.accepted]
    if result.refused:
        accepted = {id(rcpt) for rcpt in sent.accepted}
        left = [
            meta
            for meta, rcpt in zip(stored["recipients"], envelope.recipients)
            if id(rcpt) not in accepted
        ]
        meta = dict(entry.meta)
        meta["envelope"] = dict(stored, recipients=left)
        meta.setdefault("released_to", []).extend(result.delivered)
        await asyncio.to_thread(store.update_meta, entry, meta)
    else:
        await asyncio.to_thread(store.remove, entry)
        result.removed = True
    return result
