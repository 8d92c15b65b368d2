"""The naive pass-through peer the benchmark compares against: what most people write first.

An aiosmtpd handler that forwards every message with aiosmtplib's sendmail() on a new connection:
line-by-line DATA, regex normalisation and dot-stuffing, one connect + EHLO per message.
Usage: python3 naive_peer.py LISTEN_PORT FORWARD_PORT
"""

import asyncio
import sys

import aiosmtplib
from aiosmtpd.smtp import SMTP


class Forward:
    def __init__(self, port: int) -> None:
        self.port = port

    async def handle_DATA(self, server, session, envelope):
        try:
            await aiosmtplib.send(
                envelope.original_content,
                sender=envelope.mail_from,
                recipients=envelope.rcpt_tos,
                hostname="127.0.0.1",
                port=self.port,
                start_tls=False,
            )
        except Exception as error:  # any trouble: let the sender retry
            return f"451 4.3.0 {type(error).__name__}"
        return "250 2.0.0 Ok"


async def main(listen: int, forward: int) -> None:
    loop = asyncio.get_running_loop()
    handler = Forward(forward)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="naive.test", enable_SMTPUTF8=True),
        "127.0.0.1",
        listen,
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
