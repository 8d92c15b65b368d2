"""``smtpfilter policy`` answers a REAL private Postfix's check_policy_service, end to end.

main.cf gets main.cf.example's ``policy`` block as shipped (only the port rewritten): Postfix
asks our policy service (a child process, counters in a real redis-server) at RCPT and at
END-OF-MESSAGE. What is asserted crossed the wire: the reply codes and texts the SMTP client
got, and what reached the final destination (smtp-sink dumps).
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.postfix.examples import REPO, blocks, no_chroot, substitute
from tests.postfix.instance import MASTER_CF_DIST, Postfix, SmtpSink, free_port
from tests.support.redisserver import RedisServer
from tests.support.service import FilterProcess

pytestmark = pytest.mark.postfix

RULES = """
rules:
  - {name: CLIENT_RATE, check: ratelimit, key: client_ip, rate: 3/1h, action: tempfail}
  - {name: DOMAIN_RATE, check: ratelimit, key: recipient_domain, rate: 2/1h, action: reject}
"""


@pytest.fixture
def mail_system():
    root = Path(tempfile.mkdtemp(prefix="smtpfilter-policy-"))
    root.chmod(0o755)
    redis = RedisServer().start()
    (root / "rules.yaml").write_text(textwrap.dedent(RULES))
    smtp_port, sink_port, policy_port = free_port(), free_port(), free_port()
    config = root / "smtpfilter.yaml"
    config.write_text(f"rules: [rules.yaml]\nstate: {{redis: '{redis.url}'}}\n"
                      f"policy_service: {{listen: 127.0.0.1:{policy_port}}}\n")
    policy = FilterProcess(config, command="policy").start()
    postfix = Postfix(root)
    sink = SmtpSink(root, sink_port)
    block = blocks(REPO / "main.cf.example")["policy"]
    main_cf = postfix.base_main_cf(relay_port=sink_port) + substitute(
        block, {"127.0.0.1:10040": f"127.0.0.1:{policy_port}"})
    master_cf = re.sub(r"(?m)^smtp(\s+inet\s)", rf"127.0.0.1:{smtp_port}\1",
                       MASTER_CF_DIST.read_text())
    postfix.write(main_cf, no_chroot(master_cf))
    try:
        assert postfix.check() == ""
        sink.start()
        postfix.start((smtp_port,))
        yield postfix, sink, policy, smtp_port
    finally:
        postfix.stop()
        sink.stop()
        policy.close()
        redis.stop()
        if not os.environ.get("SMTPFILTER_KEEP_POSTFIX"):
            shutil.rmtree(root, ignore_errors=True)


def transaction(client: smtplib.SMTP, rcpts: list[str], *, abort: bool = False) -> list[tuple[int, bytes]]:
    """One SMTP transaction: the RCPT replies and, unless aborted (RSET), DATA's."""
    assert client.mail("sender@sender.test")[0] == 250
    replies = [client.rcpt(r) for r in rcpts]
    if abort or not any(code == 250 for code, _ in replies):
        client.rset()
        return replies
    replies.append(client.data(b"Subject: test\r\n\r\nhello\r\n"))
    return replies


def session(port: int, source: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0))
    client.ehlo("client.example.net")
    return client


def test_limits_reach_the_client_through_postfix(mail_system):
    postfix, sink, policy, port = mail_system
    # One SMTP session, so one smtpd and one policy connection: Postfix tells the policy
    # service nothing about RSET; the next transaction's first request (a new instance)
    # releases what the aborted one reserved.
    with session(port, "127.0.0.2") as client:
        for _ in range(3):  # aborted transactions (RCPT accepted, then RSET): not counted
            assert [c for c, _ in transaction(client, ["a@one.test"], abort=True)] == [250]
        for i in range(3):  # two recipients each: client_ip counts once per message
            codes = [c for c, _ in transaction(client, [f"a@d{i}.test", f"b@d{i}.test"])]
            assert codes == [250, 250, 250], codes
        # The fourth from 127.0.0.2: 450 at RCPT, from the policy's DEFER_IF_PERMIT.
        [(code, text)] = transaction(client, ["a@d9.test"])
    assert code == 450 and b"4.7.1" in text, text
    assert b"CLIENT_RATE(127.0.0.2 4/3 per 1h)" in text, text
    # Another client: a recipient domain over its own limit gets the REJECT (Postfix's 554),
    # before the queue: the client hears it, nobody gets a bounce.
    with session(port, "127.0.0.3") as client:
        replies = transaction(client, ["x@d0.test", "y@fresh.test"])
    assert replies[0][0] == 554 and b"DOMAIN_RATE(d0.test 3/2 per 1h)" in replies[0][1], replies
    assert replies[1][0] == 250 and replies[2][0] == 250, replies
    postfix.wait_log(r"to=<y@fresh\.test>.*status=sent")
    assert sorted(tuple(d.rcpts) for d in sink.delivered()) == sorted([
        ("a@d0.test", "b@d0.test"), ("a@d1.test", "b@d1.test"), ("a@d2.test", "b@d2.test"),
        ("y@fresh.test",),
    ])
    problems = [line for line in postfix.log().splitlines() if "warning:" in line or "fatal:" in line]
    assert problems == [], problems
    # One line per outcome: the recipient Postfix went on with, and the one refused at RCPT.
    policy.wait_log(r"[0-9A-Z]+: policy=message, client=unknown\[127\.0\.0\.3\], .*"
                    r"to=<y@fresh\.test>, rules=DOMAIN_RATE\(d0\.test 3/2 per 1h\), "
                    r"delay=\d+\.\d\d, status=counted$")
    policy.wait_log(r": policy=message, .*to=<x@d0\.test>, .*status=refused$")
    policy.wait_log(r": policy=rcpt, .*to=<x@d0\.test>, action=reject, by=DOMAIN_RATE, .*"
                    r"status=answered \(REJECT ")
    policy.wait_log(r": policy=message, .*to=<a@one\.test>, rules=-, .*status=abandoned$",
                    count=3)
    assert "Traceback" not in policy.log()
