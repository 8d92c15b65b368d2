"""The golden corpus through a real filter to the recording sink: the bytes 10026 gets are the
bytes the client sent, plus only the headers a rule adds.

Every message is delivered here (the rules only tag, and every delivered message gets the status
header: ``add_status: always``), with its own envelope (SMTPUTF8 and 8BITMIME where the message
needs them). What reaches the sink is compared byte for byte: our header lines first, then
the original, untouched: 8-bit, NUL bytes, a 1,500-octet line, folded and encoded headers,
broken headers and all. The one exception is on purpose: bare CR/LF line ends are rewritten
before they leave (core/wire.py, SMTP smuggling), which expected.yaml marks ``wire: normalised``.
"""

from __future__ import annotations

import pytest

from smtpfilter.core.wire import normalise
from tests.support import corpus
from tests.support.client import Client

RULES = """
rules:
  - {name: HAS_SUBJECT, check: header, header: Subject, match: '.', action: tag}
  - {name: PARSE_LIMIT, check: limits, action: tag}
"""
CONFIG = "headers: {add_status: always}\nlimits: {header_size: 8k}\n"
OWN = (b"X-Spam-Flag:", b"X-Smtpfilter-Status:")


@pytest.mark.parametrize("name", corpus.MESSAGES)
async def test_corpus_bytes_reach_10026_unchanged_but_for_our_headers(start_filter, sink, name):
    server = await start_filter(rules=RULES, config=CONFIG)
    envelope = corpus.envelope(name)
    sent = corpus.wire(name)
    params = ""
    if not sent.isascii():
        params += " BODY=8BITMIME"
    if envelope["smtputf8"]:
        params += " SMTPUTF8"
    client = await Client.connect(server.port)
    try:
        await client.ehlo()
        assert (await client.cmd(f"MAIL FROM:<{envelope['mail_from']}>{params}")).code == 250
        for rcpt in envelope["rcpts"]:
            assert (await client.cmd(f"RCPT TO:<{rcpt}>")).code == 250
        reply = await client.data(sent)
    finally:
        await client.close()
    assert reply.code == 250, reply
    [delivered] = sink.messages
    original = sent if corpus.EXPECTED[name]["wire"] == "exact" else normalise(sent)
    assert corpus.EXPECTED[name]["wire"] == "exact" or original != sent  # it did need it
    assert delivered.data.endswith(original)
    added = delivered.data[: len(delivered.data) - len(original)]
    assert added.startswith(OWN) and added.endswith(b"\r\n")
    for line in added[:-2].split(b"\r\n"):
        assert line.startswith(OWN) or line.startswith((b" ", b"\t")), line  # ours, or folded
