"""Quarantine through the live filter, and release through the command line, on real files."""

from __future__ import annotations

import asyncio
import json

from smtpfilter.cli import EX_TEMPFAIL, main
from tests.support.client import Client, send_message
from tests.support.messages import message

QUARANTINE_RULES = r"""
rules:
  - name: SPAM_MAILER
    check: header
    header: X-Mailer
    match: '^MaxBulk\.Mailer'
    action: quarantine
"""

XFORWARD = (
    "XFORWARD NAME=mail.example.net ADDR=192.0.2.7 PORT=4711",
    "XFORWARD PROTO=ESMTP HELO=mail.example.net IDENT=4F2B1 SOURCE=REMOTE",
)


async def send_with_dsn(port: int, wire: bytes):
    """A transaction as Postfix sends it: XFORWARD, DSN parameters, two recipients."""
    client = await Client.connect(port)
    try:
        await client.ehlo()
        for line in XFORWARD:
            assert (await client.cmd(line)).code == 250
        assert (await client.cmd("MAIL FROM:<bulk@example.net> RET=HDRS ENVID=Q.4F2B1")).code == 250
        assert (await client.cmd("RCPT TO:<a@example.com> NOTIFY=FAILURE ORCPT=rfc822;a@example.com")).code == 250
        assert (await client.cmd("RCPT TO:<b@example.com>")).code == 250
        reply = await client.data(wire)
        await client.cmd("QUIT")
        return reply
    finally:
        await client.close()


def cli(*args: str) -> int:
    return main(list(args))


async def test_quarantine_stores_then_release_reinjects_the_original(start_filter, sink, tmp_path, capsys):
    server = await start_filter(rules=QUARANTINE_RULES, config="quarantine: {directory: q}\n")
    wire = message("X-Mailer: MaxBulk.Mailer 12", "Subject: offer", "X-Spam-Flag: NO",
                   "X-Smtpfilter-Status: No, forged", body=b".dot line\n8-bit \xe9\n")

    reply = await send_with_dsn(server.port, wire)

    assert reply.code == 250 and reply.text.startswith("2.0.0 Ok: quarantined as ")
    assert reply.text.endswith(" by content filter (SPAM_MAILER)")
    entry_id = reply.text.split(" as ", 1)[1].split(" ", 1)[0]
    assert sink.messages == []  # 10026 saw nothing
    assert (tmp_path / "q" / "new" / entry_id).is_file()
    assert server.runtime.counters["quarantined"] == 1

    config = str(server.config_path)
    assert await asyncio.to_thread(cli, "quarantine", "list", "--config", config) == 0
    out = capsys.readouterr().out
    assert entry_id in out and "SPAM_MAILER" in out and "<bulk@example.net>" in out
    assert "a@example.com (+1)" in out and "offer" in out

    assert await asyncio.to_thread(cli, "quarantine", "show", "--config", config, entry_id) == 0
    out = capsys.readouterr().out
    assert "to:        <a@example.com> NOTIFY=FAILURE ORCPT=rfc822;a@example.com" in out
    assert "queue id:  4F2B1" in out and "mail.example.net[192.0.2.7]" in out
    assert "verdict:   quarantine by SPAM_MAILER" in out

    assert await asyncio.to_thread(cli, "quarantine", "show", "--json", "--config", config,
                                   entry_id) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert shown["id"] == entry_id and shown["file"].endswith(f"/new/{entry_id}")
    assert shown["verdict"]["rule"] == "SPAM_MAILER" and shown["queue_id"] == "4F2B1"
    assert [r["address"] for r in shown["envelope"]["recipients"]] == ["a@example.com",
                                                                       "b@example.com"]
    assert {"name": "Subject", "value": "offer"} in shown["headers"]

    assert await asyncio.to_thread(cli, "quarantine", "release", "--config", config, entry_id) == 0
    assert "released to a@example.com, b@example.com: 250 2.0.0 Ok: queued as" in capsys.readouterr().out

    [released] = sink.messages
    assert released.mail == b"MAIL FROM:<bulk@example.net> RET=HDRS ENVID=Q.4F2B1\r\n"
    assert released.rcpts == [
        b"RCPT TO:<a@example.com> NOTIFY=FAILURE ORCPT=rfc822;a@example.com\r\n",
        b"RCPT TO:<b@example.com>\r\n",
    ]
    assert b"ADDR=192.0.2.7" in released.xforward[0] and b"IDENT=4F2B1" in released.xforward[1]
    # The original bytes, less the forged verdict header that delivery would strip too
    # (an upstream X-Spam-Flag is not ours: it stays).
    assert released.data == wire.replace(b"X-Smtpfilter-Status: No, forged\r\n", b"")
    assert list((tmp_path / "q" / "new").iterdir()) == []
    assert list((tmp_path / "q" / "meta").iterdir()) == []


async def test_storing_fails_so_postfix_keeps_the_message(start_filter, sink, tmp_path):
    (tmp_path / "blocker").write_text("a file, so the quarantine cannot be created under it")
    server = await start_filter(rules=QUARANTINE_RULES,
                                config="quarantine: {directory: blocker/q}\n")
    reply = await send_message(server.port, message("X-Mailer: MaxBulk.Mailer"))
    assert reply.code == 451 and "quarantine" in reply.text
    assert sink.messages == []


async def test_a_refused_release_keeps_the_message(start_filter, sink, tmp_path, capsys):
    server = await start_filter(rules=QUARANTINE_RULES, config="quarantine: {directory: q}\n")
    reply = await send_with_dsn(server.port, message("X-Mailer: MaxBulk.Mailer"))
    entry_id = reply.text.split(" as ", 1)[1].split(" ", 1)[0]
    config = str(server.config_path)

    # 10026 refuses one recipient: the other gets it, the entry stays for the refused one only.
    sink.script = lambda verb, line, txn: (
        "550 5.1.1 <b@example.com>: Recipient address rejected" if b"<b@" in line else None
    )
    status = await asyncio.to_thread(cli, "quarantine", "release", "--config", config, entry_id)
    captured = capsys.readouterr()
    assert status == EX_TEMPFAIL
    assert "b@example.com: refused" in captured.err and "released to a@example.com" in captured.out
    meta = json.loads((tmp_path / "q" / "meta" / f"{entry_id}.json").read_text())
    assert [r["address"] for r in meta["envelope"]["recipients"]] == ["b@example.com"]
    assert meta["released_to"] == ["a@example.com"]
    assert len(sink.messages) == 1

    # 10026 refuses the message: nothing changes, and the admin is told.
    sink.script = lambda verb, line, txn: "554 5.7.1 no" if verb == "DATA" else None
    status = await asyncio.to_thread(cli, "quarantine", "release", "--config", config, entry_id)
    assert status == EX_TEMPFAIL
    assert "not released, kept in quarantine" in capsys.readouterr().err
    assert (tmp_path / "q" / "meta" / f"{entry_id}.json").is_file()

    # 10026 takes it: now it is gone, delivered once to each recipient in all.
    sink.script = None
    assert await asyncio.to_thread(cli, "quarantine", "release", "--config", config, entry_id) == 0
    assert [m.accepted_rcpts for m in sink.messages] == [
        [b"RCPT TO:<a@example.com> NOTIFY=FAILURE ORCPT=rfc822;a@example.com\r\n"],
        [b"RCPT TO:<b@example.com>\r\n"],
    ]
    assert await asyncio.to_thread(cli, "quarantine", "delete", "--config", config, entry_id) == 66


def test_a_quarantine_directory_that_does_not_exist_is_not_empty(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("log: {level: info}\nquarantine:\n  directory: qurantine\n")  # a typo
    for args in (["list"], ["list", "--json"], ["show", "X"], ["delete", "X"]):
        assert cli("quarantine", *args, "--config", str(config)) == 66
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            f"smtpfilter: quarantine directory {tmp_path / 'qurantine'} does not exist "
            f"(quarantine.directory: {config}:3); the filter creates it when it quarantines "
            f"a first message\n")
    config.write_text("log: {level: info}\n")
    import smtpfilter.config.settings as settings

    default = settings.QuarantineConfig().directory
    if not default.exists():
        assert cli("quarantine", "list", "--config", str(config)) == 66
        assert (f"quarantine.directory: the default, {config} does not set it"
                in capsys.readouterr().err)
