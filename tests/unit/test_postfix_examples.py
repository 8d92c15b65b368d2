"""The shipped Postfix examples say what shared/POSTFIX-FACTS.md §1-§3 require, on every line.

tests/postfix/ runs them in a real Postfix; these checks need no Postfix and name the exact
setting that went missing when someone edits the examples.
"""

from __future__ import annotations

import re

import pytest

from smtpfilter.config.settings import Limits
from tests.postfix.examples import REPO, blocks, merge_master_cf, no_chroot

MASTER = blocks(REPO / "master.cf.example")
MAIN = blocks(REPO / "main.cf.example")


def options(block: str) -> dict[str, str]:
    """``-o name=value`` settings of a master.cf block (comment lines skipped)."""
    found = {}
    for line in block.splitlines():
        match = re.match(r"^\s+-o\s+([a-z_0-9]+)=(\S*)\s*$", line)
        if match:
            found[match[1]] = match[2]
    return found


def entry(block: str) -> list[str]:
    [line] = [l for l in block.splitlines() if l and not l[0].isspace() and not l.startswith("#")][:1]
    return line.split()


def test_blocks_of_each_mode_exist():
    assert set(MASTER) == {"scan", "reinject", "outside-only", "before-queue", "pipe"}
    assert set(MAIN) == {"smuggling", "after-queue", "per-domain", "per-domain-map", "pipe", "milter",
                         "policy"}


def test_scan_transport():
    assert entry(MASTER["scan"])[:8] == ["scan", "unix", "-", "-", "n", "-", "20", "smtp"]
    # Postfix never opens more sessions than maxproc; smtpfilter must serve them all.
    assert int(entry(MASTER["scan"])[6]) <= Limits().sessions
    o = options(MASTER["scan"])
    assert o["smtp_send_xforward_command"] == "yes"
    assert o["smtp_tls_security_level"] == "none"
    assert o["disable_mime_output_conversion"] == "yes"
    assert o["smtp_line_length_limit"] == "0"  # lines over 998 octets pass unbroken (DKIM)
    assert o["smtp_generic_maps"] == ""
    seconds = int(o["smtp_data_done_timeout"].rstrip("s"))
    assert seconds >= 600  # never below Postfix's default: scan + re-injection must fit


def test_reinject_smtpd_has_every_override():
    assert entry(MASTER["reinject"])[:2] == ["127.0.0.1:10026", "inet"]
    o = options(MASTER["reinject"])
    assert o["content_filter"] == ""
    assert o["receive_override_options"] == (
        "no_unknown_recipient_checks,no_header_body_checks,no_milters"
    )
    assert o["smtpd_authorized_xforward_hosts"] == "127.0.0.0/8"
    for name in ("smtpd_helo_restrictions", "smtpd_client_restrictions",
                 "smtpd_sender_restrictions", "smtpd_relay_restrictions"):
        assert o[name] == "", name
    assert o["smtpd_recipient_restrictions"] == "permit_mynetworks,reject"
    assert o["mynetworks"] == "127.0.0.0/8"


def test_before_queue_keeps_header_checks_and_milters_after_the_filter():
    # SMTPD_PROXY_README: the mail has not been through cleanup yet, so the after-filter
    # smtpd must not switch off header_checks or milters.
    text = MASTER["before-queue"]
    smtp, reinject = text.split("127.0.0.1:10026", 1)
    assert options(smtp)["smtpd_proxy_filter"] == "127.0.0.1:10025"
    assert options(reinject)["receive_override_options"] == "no_unknown_recipient_checks"


def test_main_cf_after_queue_and_per_domain_map():
    assert "content_filter = scan:[127.0.0.1]:10025" in MAIN["after-queue"]
    assert "receive_override_options = no_address_mappings" in MAIN["after-queue"]
    assert "check_recipient_access hash:/etc/postfix/smtpfilter_domains" in MAIN["per-domain"]
    assert not re.search(r"(?m)^content_filter", MAIN["per-domain"])
    assert re.search(r"(?m)^example\.com\s+FILTER scan:\[127\.0\.0\.1\]:10025$", MAIN["per-domain-map"])


def test_main_cf_forbids_bare_newlines_in_front_of_us():
    # Postfix 3.7.10+ (Debian 12: 3.7.11) knows "normalize"; SMTP smuggling otherwise makes a
    # second message before smtpfilter sees anything (tests/postfix/test_fidelity.py).
    assert "smtpd_forbid_bare_newline = normalize" in MAIN["smuggling"]
    assert "smtpd_forbid_bare_newline_exclusions = $mynetworks" in MAIN["smuggling"]


def test_pipe_transport_uses_the_exit_status_contract():
    text = MASTER["pipe"]
    assert entry(text)[:8] == ["smtpfilter", "unix", "-", "n", "n", "-", "10", "pipe"]
    assert "flags=Rq user=smtpfilter null_sender=" in text
    assert "--sender=${sender} -- ${recipient}" in text
    assert "content_filter = smtpfilter:dummy" in MAIN["pipe"]


@pytest.mark.parametrize(
    "base, added, expected",
    [
        ("smtp inet n - y - - smtpd\npickup unix n - y 60 1 pickup\n",
         "smtp inet n - y - 20 smtpd\n  -o smtpd_proxy_filter=x\n",
         "pickup unix n - n 60 1 pickup\nsmtp inet n - n - 20 smtpd\n  -o smtpd_proxy_filter=x\n"),
        ("relay unix - - y - - smtp\n  -o syslog_name=x\n# note\n", "scan unix - - n - 20 smtp\n",
         "relay unix - - n - - smtp\n  -o syslog_name=x\n# note\nscan unix - - n - 20 smtp\n"),
    ],
    ids=["replaced-entry", "appended-entry"],
)
def test_merge_replaces_same_service_and_drops_chroot(base, added, expected):
    assert no_chroot(merge_master_cf(base, added)) == expected


@pytest.mark.parametrize("ci, outcome", [("true", "failed"), ("", "skipped")])
def test_postfix_tests_fail_instead_of_skipping_in_ci(monkeypatch, ci, outcome):
    import tests.postfix.conftest as postfix_tests

    monkeypatch.setattr(postfix_tests, "_missing", lambda: "Postfix is not installed")
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if outcome == "failed" else pytest.skip.Exception
    with pytest.raises(expected) as stopped:
        postfix_tests.require_postfix()
    assert "Postfix is not installed" in str(stopped.value)


def test_main_cf_milter_never_accepts_unfiltered_mail():
    settings = dict(
        line.split(" = ", 1) for line in MAIN["milter"].splitlines() if line and line[0] != "#"
    )
    assert settings == {
        "smtpd_milters": "inet:127.0.0.1:11332",  # smtpfilter's default milter.listen
        # Explicit: Postfix >= 3.7.20 defaults to shutdown; accept would let mail through
        # unfiltered, reject would bounce it.
        "milter_default_action": "tempfail",
        "milter_protocol": "6",
    }
    from smtpfilter.config.settings import MilterConfig

    assert f"smtpd_milters = {MilterConfig().listen}" in MAIN["milter"]
