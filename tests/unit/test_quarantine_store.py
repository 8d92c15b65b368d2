"""The quarantine Maildir on real files: atomic layout, exact bytes, failures leave nothing."""

from __future__ import annotations

import json
import mailbox

import pytest

from smtpfilter.core.wire import to_wire
from smtpfilter.delivery.quarantine import Quarantine, QuarantineError

TRICKY = to_wire(
    b"From: a@example.org\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\n\n"
    b".leading dot\n..two dots\n.\n\xe9 8-bit latin-1\n" + b"x" * 998 + b"\nlast"
)


def test_store_is_a_maildir_with_metadata_and_exact_bytes(tmp_path):
    store = Quarantine(tmp_path / "q")
    entry_id = store.store(TRICKY, {"verdict": {"rule": "SPAM"}})

    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["cur", "meta", "new", "tmp"]
    assert list((tmp_path / "q" / "tmp").iterdir()) == []  # nothing half-written left
    stored = (tmp_path / "q" / "new" / entry_id).read_bytes()
    assert b"\r" not in stored and stored.startswith(b"From: a@example.org\n")
    assert b"\n.leading dot\n" in stored  # unstuffed: Maildir holds the message, not SMTP
    meta = json.loads((tmp_path / "q" / "meta" / f"{entry_id}.json").read_text())
    assert meta["id"] == entry_id and meta["verdict"] == {"rule": "SPAM"}
    assert meta["size"] == len(TRICKY) and meta["form"] == "maildir"

    # A mail reader (here the stdlib's Maildir) sees one ordinary message.
    box = mailbox.Maildir(tmp_path / "q", create=False)
    try:
        [message] = list(box)
        assert message["From"] == "a@example.org"
    finally:
        box.close()

    entry = store.get(entry_id)
    assert store.wire_bytes(entry) == TRICKY  # release sends exactly what came in


def test_a_message_a_reader_has_seen_is_still_found(tmp_path):
    store = Quarantine(tmp_path)
    entry_id = store.store(TRICKY, {})
    (tmp_path / "new" / entry_id).rename(tmp_path / "cur" / f"{entry_id}:2,S")
    entry = store.get(entry_id)
    assert entry.path.name == f"{entry_id}:2,S"
    assert [e.id for e in store.entries()] == [entry_id]
    store.remove(entry)
    assert store.entries() == [] and list((tmp_path / "meta").iterdir()) == []


def test_an_altered_copy_is_not_released(tmp_path):
    store = Quarantine(tmp_path)
    entry_id = store.store(TRICKY, {})
    path = tmp_path / "new" / entry_id
    path.write_bytes(path.read_bytes().replace(b"last", b"LAST"))
    with pytest.raises(QuarantineError, match="SHA-256 mismatch"):
        store.wire_bytes(store.get(entry_id))


def test_wire_data_that_does_not_round_trip_is_kept_as_wire(tmp_path):
    # One unstuffed leading dot: no Postfix sends it, but release must still be exact.
    odd = b"Subject: x\r\n\r\n.not stuffed\r\n"
    store = Quarantine(tmp_path)
    entry = store.get(store.store(odd, {}))
    assert entry.meta["form"] == "wire"
    assert store.wire_bytes(entry) == odd


def test_failure_raises_and_leaves_nothing(tmp_path):
    # A real fault, no mock: the quarantine's parent is a file, so nothing can be created.
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = Quarantine(blocker / "q")
    with pytest.raises(QuarantineError, match="cannot store in"):
        store.store(TRICKY, {})

    # new/ is unusable after the metadata was written: the metadata is removed again.
    root = tmp_path / "q2"
    for name in ("tmp", "cur", "meta"):
        (root / name).mkdir(parents=True)
    (root / "new").write_text("a file where new/ should be")
    with pytest.raises(QuarantineError):
        Quarantine(root).store(TRICKY, {})
    assert list((root / "meta").iterdir()) == [] and list((root / "tmp").iterdir()) == []


def test_bad_ids_are_refused(tmp_path):
    store = Quarantine(tmp_path)
    for bad in ("", "../etc/passwd", ".hidden", "nope"):
        with pytest.raises(QuarantineError):
            store.get(bad)


def test_check_directory_creates_nothing(tmp_path):
    from smtpfilter.delivery.quarantine import check_directory

    assert check_directory(tmp_path / "a" / "b") is None
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    assert "not a writable directory" in check_directory(tmp_path / "file" / "q")
    Quarantine(tmp_path / "q").store(TRICKY, {})
    assert check_directory(tmp_path / "q") is None


def test_check_config_reports_the_quarantine(tmp_path, capsys):
    from smtpfilter.cli import main

    (tmp_path / "file").write_text("x")
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - {name: HOLD, check: header, header: Subject, match: x, action: quarantine}\n")
    (tmp_path / "c.yaml").write_text("rules: [r.yaml]\nquarantine: {directory: file/q}\n"
                                     "metrics: {listen: 127.0.0.1:9125}\n")
    assert main(["check-config", "--config", str(tmp_path / "c.yaml")]) == 0
    captured = capsys.readouterr()
    assert "warning: quarantine:" in captured.err and "451" in captured.err
    assert "metrics: http://127.0.0.1:9125/metrics" in captured.out
