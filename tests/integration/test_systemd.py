"""The systemd units: systemd-analyze verify accepts them without a single warning, and the
server takes the socket a .socket unit hands over (socket activation)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.integration.conftest import start
from tests.support.client import send_message
from tests.support.messages import message
from tests.support.service import REPO

UNITS = ("smtpfilter.service", "smtpfilter.socket", "smtpfilter-milter.service")


@pytest.fixture
def verify(tmp_path):
    """``verify(units)`` → systemd-analyze verify's complaints about copies of ``units``.

    The copies run this checkout's smtpfilter instead of /opt/smtpfilter/bin/smtpfilter:
    verify insists that ExecStart's program exists. Nothing else is changed."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but systemd-analyze is missing: .ci/run must install systemd")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")

    def run(texts: dict[str, str]) -> str:
        for name, text in texts.items():
            (tmp_path / name).write_text(
                text.replace("/opt/smtpfilter/bin/smtpfilter", f"{sys.executable} -m smtpfilter")
            )
        result = subprocess.run(
            [tool, "verify", "--man=no", *(str(tmp_path / name) for name in texts)],
            capture_output=True, text=True, timeout=60,
        )
        return (result.stdout + result.stderr + (f"exit status {result.returncode}" if result.returncode else "")).strip()

    return run


def test_units_verify_without_a_warning(verify):
    texts = {name: (REPO / "systemd" / name).read_text() for name in UNITS}
    assert verify(texts) == ""


def test_verify_would_notice_a_mistake(verify):
    # systemd-analyze verify exits 0 on settings it ignores: only its output tells. Prove
    # that the check above can fail, so that it cannot pass by checking nothing.
    text = (REPO / "systemd" / "smtpfilter.service").read_text().replace("Type=notify", "Type=notifyy")
    assert "Failed to parse service type, ignoring: notifyy" in verify({"smtpfilter.service": text})


@pytest.mark.parametrize("unit", ["smtpfilter.service", "smtpfilter-milter.service"])
def test_the_service_unit_says_what_the_brief_requires(unit):
    service = (REPO / "systemd" / unit).read_text().splitlines()
    for setting in (
        "Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
        "RestartPreventExitStatus=78", "DynamicUser=yes", "NoNewPrivileges=yes",
        "ProtectSystem=strict", "PrivateTmp=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=", "SystemCallFilter=@system-service",
    ):
        assert setting in service, setting


async def test_socket_activation_serves_connections_made_before_it_started(service):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        # Held by "systemd" while the service is not running: a client's connection waits
        # in the listen queue instead of being refused (and Postfix deferring the mail).
        early = asyncio.create_task(send_message(port, message("Subject: early")))
        process = await start(service(), listen_socket=listener)
        reply = await asyncio.wait_for(early, 20)
        assert reply.code == 250
        assert f"using the listening socket systemd passed (127.0.0.1:{port})" in process.log()
        assert f"smtpfilter listening on 127.0.0.1:{port}," in process.log()
        # The configured "listen" port was never bound.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", process.port)
    finally:
        listener.close()


def test_the_milter_unit_runs_the_milter_for_postfix():
    service = (REPO / "systemd" / "smtpfilter-milter.service").read_text().splitlines()
    assert "ExecStart=/opt/smtpfilter/bin/smtpfilter milter --config /etc/smtpfilter/smtpfilter.yaml" in service
    # smtpd (user postfix) must be able to connect to a unix socket in /run/smtpfilter.
    for setting in ("Group=postfix", "RuntimeDirectory=smtpfilter", "RuntimeDirectoryMode=0750"):
        assert setting in service, setting
