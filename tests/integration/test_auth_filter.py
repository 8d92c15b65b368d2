"""Sender authentication through the whole filter: client → filter (→ DNS server) → 10026 sink.

What crosses the wire is checked: one Authentication-Results header on top of what the sink got
(parsed back with the authres library), the forged ones naming our id gone and everything else
byte for byte as sent; the spf, dkim and dmarc rules deciding; DNS trouble ending as temperror,
never as a 5xx of ours; and the same header from the pipe(8) front door and on quarantine release.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import authres
import pytest

from smtpfilter.cli import main
from tests.support import loglines
from tests.support.auth import AUTHSERV_ID, BAD_IP, GOOD_IP, message, serve_auth_zones, sign, wire
from tests.support.client import send_message
from tests.support.dnsserver import DnsServer, Fault
from tests.support.service import REPO, child_env

RULES = """
rules:
  - {name: SPF_FAIL, check: spf, results: [fail], action: tag, score: 3}
  - {name: DKIM_BROKEN, check: dkim, results: [fail], action: tag, score: 2}
  - {name: DMARC_REJECT, check: dmarc, policy: [reject], action: quarantine}
"""

FORGED = (
    "Authentication-Results: mx.receiver.test; dkim=pass header.d=reject.test\r\n"
    "Authentication-Results: (looks like ours)\r\n mx.receiver.test; dmarc=pass\r\n"
    "Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=reject.test\r\n"
)
KEPT = "Authentication-Results: relay.other.test; spf=pass smtp.mailfrom=reject.test\r\n"


def config(server: DnsServer, authserv_id: str | None = AUTHSERV_ID, extra: str = "") -> str:
    text = (
        f'dns: {{nameservers: ["127.0.0.1:{server.port}"], timeout: 1s, message_timeout: 2s}}\n'
        "quarantine: {directory: q}\n"
    )
    if authserv_id:
        text += f"authentication: {{authserv_id: {authserv_id}, timeout: 3s}}\n"
    return text + extra


def xforward(addr: str, helo: str = "mail.sender.test") -> tuple[str, ...]:
    return (f"XFORWARD NAME=mail.example.net ADDR={addr} PORT=41234",
            f"XFORWARD HELO={helo} PROTO=ESMTP IDENT=4F2B1")


@pytest.fixture
async def zones(dns_server):
    serve_auth_zones(dns_server)
    return dns_server


def results_of(header_line: bytes):
    return authres.AuthenticationResultsHeader.parse(header_line.decode().replace("\r\n", ""))


def split_top(data: bytes) -> tuple[bytes, bytes]:
    """(our first header field, unfolded lines included, the rest)."""
    end = data.index(b"\r\n") + 2
    while data[end:end + 1] in (b" ", b"\t"):
        end = data.index(b"\r\n", end) + 2
    return data[:end], data[end:]


async def test_one_header_on_top_forged_ones_removed_the_rest_untouched(start_filter, sink, zones):
    server = await start_filter(rules=RULES, config=config(zones))
    signed = sign(message(from_="Alice <alice@reject.test>", extra=FORGED), domain="reject.test")
    sent = wire(signed)
    reply = await send_message(server.port, sent, mail_from="bounce@reject.test",
                               xforward=xforward(GOOD_IP))
    assert reply.code == 250, reply
    [delivered] = sink.messages
    top, rest = split_top(delivered.data)
    assert top.startswith(b"Authentication-Results: mx.receiver.test; spf=pass")
    assert rest == sent.replace(FORGED.encode(), KEPT.encode())  # only the forged ones went
    assert delivered.data.count(b"Authentication-Results: mx.receiver.test") == 1
    parsed = results_of(top)
    assert parsed.authserv_id == AUTHSERV_ID
    found = {r.method: (r.result, {f"{p.type}.{p.name}": p.value for p in r.properties})
             for r in parsed.results}
    assert found["spf"] == ("pass", {"smtp.mailfrom": "bounce@reject.test"})
    assert found["dkim"][0] == "pass" and found["dkim"][1]["header.d"] == "reject.test"
    assert found["dmarc"] == ("pass", {"header.from": "reject.test"})


async def test_forged_dmarc_is_quarantined_and_released_with_the_header(
    start_filter, sink, zones, tmp_path, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="smtpfilter.engine.judge")
    server = await start_filter(rules=RULES, config=config(zones))
    forged = sign(message(from_="CEO <ceo@reject.test>", extra=FORGED), domain="reject.test")
    sent = wire(forged.replace(b"Bye.", b"Pay!"))
    reply = await send_message(server.port, sent, mail_from="ceo@reject.test",
                               xforward=xforward(BAD_IP))
    assert reply.code == 250 and "quarantined as" in reply.text and "(DMARC_REJECT)" in reply.text
    assert sink.messages == []
    [line] = loglines.from_caplog(caplog)
    assert (line["action"], line["by"]) == ("quarantine", "DMARC_REJECT")
    # Findings joined with "+": a finding's own "=" and spaces stay inside its field.
    assert line["rules"] == ("SPF_FAIL(fail reject.test)+DKIM_BROKEN(fail d=reject.test)+"
                             "DMARC_REJECT(fail p=reject reject.test)")
    assert line["status"].startswith("quarantined (250 2.0.0 Ok: quarantined as ")
    entry_id = reply.text.split(" as ", 1)[1].split(" ", 1)[0]
    meta = json.loads((tmp_path / "q" / "meta" / f"{entry_id}.json").read_text())
    [[name, value]] = meta["headers"]
    assert name == "Authentication-Results" and "dmarc=fail (p=reject dis=reject)" in value

    config_path = str(server.config_path)
    status = await asyncio.to_thread(main, ["quarantine", "release", "--config", config_path, entry_id])
    assert status == 0, capsys.readouterr()
    [released] = sink.messages
    top, rest = split_top(released.data)
    assert [(r.method, r.result) for r in results_of(top).results] == [
        ("spf", "fail"), ("dkim", "fail"), ("dmarc", "fail")
    ]
    assert rest == sent.replace(FORGED.encode(), KEPT.encode())


async def test_without_authserv_id_nothing_is_added_or_removed(start_filter, sink, zones):
    server = await start_filter(rules=RULES, config=config(zones, authserv_id=None))
    sent = wire(sign(message(from_="a@reject.test", extra=FORGED), domain="reject.test"))
    reply = await send_message(server.port, sent, mail_from="a@reject.test",
                               xforward=xforward(GOOD_IP))
    assert reply.code == 250
    assert sink.messages[0].data == sent


async def test_local_submission_gets_dkim_only(start_filter, sink, zones):
    """No XFORWARD ADDR (pickup/sendmail): no SPF, no DMARC; DKIM all the same."""
    server = await start_filter(rules=RULES, config=config(zones))
    sent = wire(sign(message(), domain="sender.test"))
    assert (await send_message(server.port, sent)).code == 250
    top, rest = split_top(sink.messages[0].data)
    assert [(r.method, r.result) for r in results_of(top).results] == [("dkim", "pass")]
    assert rest == sent


@pytest.mark.parametrize("fault", [Fault.SERVFAIL, Fault.DROP])
async def test_dns_down_is_temperror_and_the_rules_decide(start_filter, sink, zones, fault):
    """No 5xx of ours, nothing lost: delivered with temperror in the header, or, where a rule
    says so for temperror, 451 (Postfix keeps the message and retries)."""
    for zone in ("reject.test", "sender.test"):
        zones.fault(zone, fault)
    rules = RULES + "  - {name: DMARC_DNS, check: dmarc, results: [temperror], action: tempfail}\n"
    server = await start_filter(rules=rules, config=config(zones, extra="limits: {scan_timeout: 10s}\n"))
    sent = wire(sign(message(from_="a@reject.test"), domain="reject.test"))
    reply = await send_message(server.port, sent, mail_from="a@reject.test",
                               xforward=xforward(BAD_IP))
    assert reply.code == 451, reply
    assert sink.messages == []
    server2 = await start_filter(rules=RULES, config=config(zones))
    reply = await send_message(server2.port, sent, mail_from="a@reject.test",
                               xforward=xforward(BAD_IP))
    assert reply.code == 250, reply
    top, _ = split_top(sink.messages[0].data)
    assert [(r.method, r.result) for r in results_of(top).results] == [
        ("spf", "temperror"), ("dkim", "temperror"), ("dmarc", "temperror")
    ]


@pytest.mark.parametrize(
    ("mail_from", "spf"), [("a+b=c@none.test", "fail"), ("", "none")], ids=["sender", "null-sender"]
)
async def test_hostile_helo_and_sender_cannot_inject_results(start_filter, sink, zones, mail_from, spf):
    """HELO and MAIL FROM come from the remote client; in our header they stay one quoted
    property value (a null sender puts the HELO name in it, RFC 7208 §2.4)."""
    server = await start_filter(rules=RULES, config=config(zones))
    sent = wire(message(from_="x@none.test"))
    reply = await send_message(server.port, sent, mail_from=mail_from,
                               xforward=xforward(BAD_IP, helo="evil;dkim=pass"))
    assert reply.code == 250
    top, _ = split_top(sink.messages[0].data)
    assert [(r.method, r.result) for r in results_of(top).results] == [
        ("spf", spf), ("dkim", "none"), ("dmarc", "fail")
    ]
    if not mail_from:
        assert b'smtp.helo="evil;dkim=pass"' in top


async def test_pipe_front_door_adds_the_same_header(tmp_path, sink, zones):
    (tmp_path / "rules.yaml").write_text(RULES)
    path = tmp_path / "smtpfilter.yaml"
    path.write_text(f"forward: 127.0.0.1:{sink.port}\nhostname: filter.test\nrules: [rules.yaml]\n"
                    + config(zones))
    content = sign(message(from_="Alice <alice@reject.test>", extra=FORGED), domain="reject.test")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smtpfilter", "pipe", f"--config={path}",
        f"--client-address={GOOD_IP}", "--client-helo=mail.sender.test",
        "--sender=bounce@reject.test", "--", "bob@receiver.test",
        cwd=REPO, env=child_env(), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(content), 60)
    assert process.returncode == 0, (out, err)
    top, rest = split_top(sink.messages[0].data)
    assert [(r.method, r.result) for r in results_of(top).results] == [
        ("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")
    ]
    assert rest == wire(content).replace(FORGED.encode(), KEPT.encode())


async def test_dry_run_delivers_with_the_header_and_without_forged_ones(start_filter, sink, zones):
    """The header is not a verdict: dry_run delivers what DMARC_REJECT would quarantine, with
    the header on top, and a forged header never survives, whatever the mode."""
    server = await start_filter(rules=RULES, config=config(zones, extra="dry_run: true\n"))
    sent = wire(message(from_="CEO <ceo@reject.test>", extra=FORGED))
    reply = await send_message(server.port, sent, mail_from="ceo@reject.test",
                               xforward=xforward(BAD_IP))
    assert reply.code == 250 and "queued" in reply.text
    top, rest = split_top(sink.messages[0].data)
    assert [(r.method, r.result) for r in results_of(top).results] == [
        ("spf", "fail"), ("dkim", "none"), ("dmarc", "fail")
    ]
    assert rest == sent.replace(FORGED.encode(), KEPT.encode())


async def test_sighup_applies_a_new_authserv_id(start_filter, sink, zones):
    """A reload takes the new id for the header and for what counts as forged; messages keep
    the generation they started with (service/runtime.py)."""
    server = await start_filter(rules=RULES, config=config(zones))
    path = server.config_path
    text = path.read_text().replace(f"authserv_id: {AUTHSERV_ID}", "authserv_id: mx2.receiver.test")
    path.write_text(text)
    assert server.reload()
    forged = "Authentication-Results: mx2.receiver.test; dmarc=pass\r\n"
    sent = wire(message(from_="a@none.test", extra=FORGED + forged))
    assert (await send_message(server.port, sent, mail_from="a@none.test",
                               xforward=xforward(GOOD_IP))).code == 250
    top, rest = split_top(sink.messages[0].data)
    assert top.startswith(b"Authentication-Results: mx2.receiver.test; spf=pass")
    assert rest == sent.replace(forged.encode(), b"")  # the old id's fields are no longer ours


@pytest.mark.parametrize("with_rules", [True, False], ids=["rules", "header-only"])
async def test_authentication_runs_beside_the_dns_lists(start_filter, sink, zones, with_rules):
    """The DNS list answers slowly; SPF's first query must not wait for it: both arrive at the
    DNS server together, whether a rule or only the header asks for authentication."""
    zones.fault("zen.dnsbl.test", delay=0.6)
    rules = """
    rules:
      - {name: DNSBL, check: dnsbl, sites: zen.dnsbl.test, score: 1}
    """ + ("  - {name: SPF_FAIL, check: spf, results: [fail], score: 1}\n" if with_rules else "")
    server = await start_filter(rules=rules, config=config(zones))
    sent = wire(message(from_="a@none.test"))
    reply = await send_message(server.port, sent, mail_from="a@none.test",
                               xforward=xforward("1.2.3.7"))  # public: the DNS list asks
    assert reply.code == 250
    arrived = {(q.name, q.rdtype): q.at for q in reversed(zones.queries)}  # the first of each
    dnsbl = arrived[("7.3.2.1.zen.dnsbl.test", "A")]
    spf = arrived[("none.test", "TXT")]
    assert abs(spf - dnsbl) < 0.3, spf - dnsbl


async def test_a_forged_header_past_the_header_limit_is_removed_too(start_filter, sink, zones):
    """Past limits.header_size the rules read nothing, but a forged Authentication-Results hidden
    there still goes: the header section is read to its end for it."""
    server = await start_filter(rules=RULES, config=config(zones, extra="limits: {header_size: 4k}\n"))
    padding = "".join(f"X-Padding-{i}: {'x' * 60}\r\n" for i in range(100))  # about 8 KB
    sent = wire(message(from_="a@none.test", extra=padding + FORGED))
    reply = await send_message(server.port, sent, mail_from="a@none.test",
                               xforward=xforward(GOOD_IP))
    assert reply.code == 250
    top, rest = split_top(sink.messages[0].data)
    assert top.startswith(b"Authentication-Results: mx.receiver.test; spf=pass")
    assert rest == sent.replace(FORGED.encode(), KEPT.encode())
