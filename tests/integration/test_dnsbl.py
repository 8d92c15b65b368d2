"""DNS lists through the whole filter: client → filter → (DNS server) → recording 10026 sink."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import textwrap
import time
from pathlib import Path

from tests.support.client import Client, send_message
from tests.support.dnsserver import IPV6_LISTED, SITES, DnsServer, Fault
from tests.support.messages import message
from tests.support.sink import wait_until

REPO = Path(__file__).resolve().parents[2]


def dns_config(server: DnsServer, **extra: str) -> str:
    settings = {"timeout": "1s", "message_timeout": "2s", **extra}
    inner = ", ".join(f"{k}: {v}" for k, v in settings.items())
    return f'dns: {{nameservers: ["127.0.0.1:{server.port}"], {inner}}}\n'


DNSBL_REJECT = f"""
rules:
  - name: DNSBL
    check: dnsbl
    sites: "{SITES}"
    threshold: 3
    allowlist_threshold: -1
    action: reject
    text: "5.7.1 Service unavailable; client [$1] blocked using $2; $3"
  - name: SPAM_MAILER
    check: header
    header: X-Mailer
    match: ['^MaxBulk']
    action: discard
"""


def xforward(addr: str) -> tuple[str, ...]:
    return (f"XFORWARD NAME=mail.example.net ADDR={addr} PORT=41234", "XFORWARD HELO=mail.example.net PROTO=ESMTP")


async def test_listed_ipv4_client_is_rejected_with_the_lists_reason(start_filter, sink, dns_server):
    server = await start_filter(rules=DNSBL_REJECT, config=dns_config(dns_server))
    reply = await send_message(server.port, message("Subject: hi"), xforward=xforward("1.2.3.4"))
    assert reply.code == 550
    assert reply.text == (
        "5.7.1 Service unavailable; client [1.2.3.4] blocked using zen.dnsbl.test, bl.dnsbl.test; "
        "https://zen.dnsbl.test/query/ip/1.2.3.4 / Blocked - see https://bl.dnsbl.test/1.2.3.4"
    )
    assert sink.messages == []
    # FILTER_README: the 10026 transaction is aborted, never finished with ".".
    assert all(t.data is None for c in sink.connections for t in c.transactions)


async def test_listed_ipv6_client_is_rejected(start_filter, sink, dns_server):
    server = await start_filter(rules=DNSBL_REJECT, config=dns_config(dns_server))
    reply = await send_message(server.port, message(), xforward=xforward(f"IPv6:{IPV6_LISTED}"))
    assert reply.code == 550 and f"client [{IPV6_LISTED}]" in reply.text
    assert sink.messages == []


async def test_allowlisted_client_skips_the_remaining_rules(start_filter, sink, dns_server):
    server = await start_filter(rules=DNSBL_REJECT, config=dns_config(dns_server))
    spam = message("X-Mailer: MaxBulk.Mailer 12", "Subject: would be discarded")
    allowed = await send_message(server.port, spam, xforward=xforward("1.2.3.8"))
    assert allowed.code == 250 and len(sink.messages) == 1
    # The same message from a client no list knows is discarded by the header rule.
    unknown = await send_message(server.port, spam, xforward=xforward("5.6.7.8"))
    assert unknown.code == 250 and "discarded" in unknown.text
    assert len(sink.messages) == 1


async def test_tagged_message_header_shows_each_answer_and_the_total(start_filter, sink, dns_server):
    rules = f"""
    rules:
      - name: DNSBL
        check: dnsbl
        sites: "{SITES}"
        threshold: 3
        action: tag
    """
    server = await start_filter(rules=rules, config=dns_config(dns_server))
    reply = await send_message(server.port, message("Subject: tag me"), xforward=xforward("1.2.3.4"))
    assert reply.code == 250
    [delivered] = sink.messages
    head = delivered.data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = head.replace("\r\n\t", " ")
    assert "X-Spam-Flag: YES" in unfolded
    assert (
        "X-Smtpfilter-Status: Yes, score=0, rules=DNSBL(LISTED) [zen.dnsbl.test=127.0.0.4(+3) "
        "bl.dnsbl.test=127.0.0.2(+2) list.dnswl.test=- total=5]"
    ) in unfolded


async def test_local_submission_without_xforward_addr_is_never_looked_up(start_filter, sink, dns_server):
    server = await start_filter(rules=DNSBL_REJECT, config=dns_config(dns_server))
    before = len(dns_server.queries)
    local = await send_message(server.port, message(), xforward=("XFORWARD NAME=localhost ADDR=[UNAVAILABLE]",))
    loopback = await send_message(server.port, message(), xforward=xforward("127.0.0.1"))
    assert local.code == 250 and loopback.code == 250
    assert len(sink.messages) == 2
    client_queries = [q for q in dns_server.queries[before:] if "127" not in q.name.split(".")[:4]]
    assert client_queries == []  # only the zones' own health probes, if any


async def test_silent_dns_delivers_within_the_limit_or_defers_when_configured(start_filter, sink, dns_server):
    dns_server.fault("dnsbl.test", Fault.DROP)
    dns_server.fault("dnswl.test", Fault.DROP)
    ignore = await start_filter(
        rules=DNSBL_REJECT, config=dns_config(dns_server, timeout="300ms", message_timeout="500ms")
    )
    started = time.monotonic()
    reply = await send_message(ignore.port, message(), xforward=xforward("1.2.3.4"))
    assert reply.code == 250  # a DNS failure is "not listed": mail flows
    assert time.monotonic() - started < 2.0
    tempfail = await start_filter(
        rules=DNSBL_REJECT,
        config=dns_config(dns_server, timeout="300ms", message_timeout="500ms", on_error="tempfail"),
    )
    reply = await send_message(tempfail.port, message(), xforward=xforward("1.2.3.4"))
    assert reply.code == 451  # Postfix keeps the message and retries
    assert len(sink.messages) == 1


async def test_zone_failing_its_start_probe_is_disabled(start_filter, sink, dns_server):
    rules = """
    rules:
      - name: WORLD
        check: dnsbl
        sites: "world.dnsbl.test*5, zen.dnsbl.test*3"
        threshold: 3
        action: reject
    """
    server = await start_filter(rules=rules, config=dns_config(dns_server))
    health = server.env.dns.health
    await wait_until(lambda: "world.dnsbl.test" in health.states and "zen.dnsbl.test" in health.states)
    assert not health.usable("world.dnsbl.test") and health.usable("zen.dnsbl.test")
    # 1.2.3.7 is "listed" only by the zone that lists everything: delivered.
    reply = await send_message(server.port, message(), xforward=xforward("1.2.3.7"))
    assert reply.code == 250
    assert dns_server.count("7.3.2.1.world.dnsbl.test") == 0


async def test_cached_answers_serve_the_next_message_and_survive_a_reload(start_filter, sink, dns_server):
    server = await start_filter(rules=DNSBL_REJECT, config=dns_config(dns_server))
    first = await send_message(server.port, message(), xforward=xforward("1.2.3.7"))
    asked = dns_server.count_under("dnsbl.test") + dns_server.count_under("dnswl.test")
    assert server.reload()
    second = await send_message(server.port, message(), xforward=xforward("1.2.3.7"))
    assert first.code == second.code == 250
    assert dns_server.count_under("dnsbl.test") + dns_server.count_under("dnswl.test") == asked


async def test_concurrent_sessions_from_one_client_share_one_query_per_list(start_filter, sink, dns_server):
    dns_server.fault("dnsbl.test", delay=0.2)
    dns_server.fault("dnswl.test", delay=0.2)
    server = await start_filter(rules=DNSBL_REJECT, config=dns_config(dns_server))
    replies = await asyncio.gather(
        *(send_message(server.port, message(), xforward=xforward("1.2.3.7")) for _ in range(20))
    )
    assert {r.code for r in replies} == {250}
    for zone in ("zen.dnsbl.test", "bl.dnsbl.test", "list.dnswl.test"):
        assert dns_server.count(f"7.3.2.1.{zone}", "A") == 1


async def test_rhsbl_rejects_a_listed_sender_domain(start_filter, sink, dns_server):
    rules = """
    rules:
      - name: SENDER_DBL
        check: rhsbl
        sites: dbl.rhsbl.test
        lookup: [sender, from]
        action: reject
        text: "5.7.1 Sender domain $1 is listed by $2"
    """
    server = await start_filter(rules=rules, config=dns_config(dns_server))
    listed = await send_message(server.port, message(), mail_from="news@spam.example")
    assert listed.code == 550 and listed.text == "5.7.1 Sender domain spam.example is listed by dbl.rhsbl.test"
    clean = await send_message(server.port, message(), mail_from="a@example.org")
    assert clean.code == 250 and len(sink.messages) == 1


async def test_smtpfilter_test_with_client_ip_runs_the_dnsbl_rule(tmp_path, dns_server):
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(DNSBL_REJECT))
    (tmp_path / "config.yaml").write_text("rules: [rules.yaml]\n" + dns_config(dns_server))
    eml = tmp_path / "m.eml"
    eml.write_bytes(message("Subject: stored").replace(b"\r\n", b"\n"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smtpfilter", "test", "--config", str(tmp_path / "config.yaml"),
        "--client-ip", "1.2.3.4", str(eml),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert re.search(r"DNSBL +LISTED +score=0 +action=reject", text), text
    assert "client 1.2.3.4 listed: score 5 >= 3" in text
    assert "reply:    550 5.7.1 Service unavailable; client [1.2.3.4] blocked using" in text


async def test_pipelined_session_with_xforward_and_a_listed_client(start_filter, sink, dns_server):
    # Postfix pipelines XFORWARD, MAIL, RCPT and DATA; the verdict still comes after ".".
    server = await start_filter(rules=DNSBL_REJECT, config=dns_config(dns_server))
    client = await Client.connect(server.port)
    await client.ehlo()
    client.send(
        "XFORWARD NAME=x.example ADDR=1.2.3.4\r\nMAIL FROM:<a@example.org>\r\n"
        "RCPT TO:<b@example.com>\r\nDATA\r\n"
    )
    codes = [(await client.reply()).code for _ in range(4)]
    client.send(message() + b".\r\n")
    final = await client.reply()
    await client.cmd("QUIT")
    await client.close()
    assert codes == [250, 250, 250, 354] and final.code == 550
