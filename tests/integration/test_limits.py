"""What the rules could not read is a finding, and the log says so (issue 10, item 4).

1.12 MB of small headers before ``X-Mailer: MaxBulk.Mailer`` got past the shipped discard rule
through real Postfix: the header section is read up to ``limits.header_size`` (1 MiB) and the
rest was invisible to every rule, with no log line and no tag.
"""

from __future__ import annotations

import logging

from tests.support import loglines
from tests.support.client import send_message
from tests.support.messages import message

# 14,400 headers of 78 bytes: 1.12 MB, past the default limits.header_size of 1 MiB.
FILLER = [f"X-Filler-{n:05d}: {'v' * 60}" for n in range(14_400)]
HIDDEN_MAILER = message(*FILLER, "X-Mailer: MaxBulk.Mailer 12", "Subject: bulk")


def unfolded_prefix(delivered: bytes, original: bytes) -> str:
    """The headers we added in front of the original bytes, unfolded."""
    assert delivered.endswith(original)  # the message itself passes unchanged
    return delivered[: -len(original)].decode("ascii").replace("\r\n\t", " ").replace("\r\n ", " ")


async def test_headers_past_header_size_are_tagged_by_the_shipped_rules(start_filter, sink, caplog):
    assert len(HIDDEN_MAILER) > 1.07 * 2**20
    server = await start_filter(shipped=True)
    with caplog.at_level(logging.INFO, logger="smtpfilter"):
        reply = await send_message(server.port, HIDDEN_MAILER)

    # Delivered (after the queue we never bounce), tagged by the shipped PARSE_LIMIT rule.
    assert reply.code == 250
    [delivered] = sink.messages
    added = unfolded_prefix(delivered.data, HIDDEN_MAILER)
    assert added.startswith("X-Spam-Flag: YES\r\n")
    assert "X-Smtpfilter-Status: Yes, score=5, rules=PARSE_LIMIT(HEADER_LIMIT)" in added

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        w.startswith("NOQUEUE: from=<sender@example.org>: header section longer than "
                     "limits.header_size (1048576 bytes): ")
        and "the rules did not read the rest" in w for w in warnings
    ), warnings
    [summary] = loglines.from_caplog(caplog)
    assert (summary["action"], summary["score"]) == ("tag", "5")
    assert summary["rules"] == "PARSE_LIMIT(HEADER_LIMIT)"


async def test_the_log_says_so_even_when_no_rule_watches_the_limit(start_filter, sink, caplog):
    server = await start_filter()  # the three rules: none of kind limits
    with caplog.at_level(logging.INFO, logger="smtpfilter"):
        assert (await send_message(server.port, HIDDEN_MAILER)).code == 250
        assert (await send_message(server.port, message("Subject: small"))).code == 250
    [warning] = [r for r in caplog.records if "limits.header_size" in r.getMessage()]
    assert warning.levelno == logging.WARNING and warning.name == "smtpfilter.engine.judge"
    assert [m.data for m in sink.messages] == [HIDDEN_MAILER, message("Subject: small")]
