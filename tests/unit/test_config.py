"""Config: defaults, overrides, and errors that name the file, the key and what happens."""

from __future__ import annotations

import textwrap

import pytest

from smtpfilter.config.options import ConfigError, parse_duration, parse_size
from smtpfilter.config.settings import HostPort, load_config, parse_hostport
from smtpfilter.core.verdict import Action


def load(tmp_path, text):
    path = tmp_path / "smtpfilter.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_defaults_are_filter_readme():
    config = load_config(None)
    assert str(config.listen) == "127.0.0.1:10025"
    assert str(config.forward) == "127.0.0.1:10026"
    assert config.hostname.startswith("smtpfilter.")
    # Postfix's message_size_limit (its default without a main.cf; no limit without Postfix).
    assert config.limits.follows_postfix
    assert config.limits.message_size == (config.postfix.message_size_limit or 0)
    assert config.tls is None


def test_a_full_config(tmp_path):
    config = load(
        tmp_path,
        """\
        listen: "[::1]:10025"
        forward: localhost:10026
        hostname: filter.example.org
        rules: [rules.d, extra.yaml]
        allow_clients: [127.0.0.0/8, 10.1.2.3]
        limits: {message_size: 50m, scan_timeout: 30s, sessions: 50}
        policy: {tag: 5, reject: 15.5}
        dns: {nameservers: ["127.0.0.1:5353", "::1"], timeout: 500ms}
        headers: {add_status: always}
        log: {target: syslog, level: debug}
        """,
    )
    assert config.listen == HostPort("::1", 10025)
    assert config.forward == HostPort("localhost", 10026)
    assert config.rules == (tmp_path / "rules.d", tmp_path / "extra.yaml")
    assert config.limits.message_size == 50 * 1024 * 1024
    assert config.limits.scan_timeout == 30
    assert config.policy.thresholds == ((5.0, Action.TAG), (15.5, Action.REJECT))
    assert [str(s) for s in config.dns.nameservers] == ["127.0.0.1:5353", "[::1]:53"]
    assert config.dns.timeout == 0.5


def test_overrides():
    config = load_config(None).with_overrides(listen="127.0.0.1:2525", forward=None)
    assert config.listen.port == 2525
    with pytest.raises(ConfigError, match="--forward"):
        config.with_overrides(forward="nope")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("listn: 127.0.0.1:10025\n", "unknown key 'listn'; did you mean 'listen'?"),
        ("listen: 127.0.0.1\n", "missing port"),
        ("listen: ::1:10025\n", "brackets"),
        ("forward: 127.0.0.1:99999\n", "not a port number"),
        ("hostname: 'bad host'\n", "not a host name"),
        ("allow_clients: [everyone]\n", "not an address or network"),
        ("limits: {sessions: 0}\n", "at least 1"),
        ("limits: {scan_timeout: soon}\n", "not a duration"),
        ("limits: {scan_timeout: 400s, data_timeout: 300s}\n", "smtp_data_done_timeout"),
        ("limits: {bogus: 1}\n", "unknown key 'limits.bogus'"),
        ("policy: {reject: high}\n", "expected a number"),
        ("tls: {cert: /nonexistent.pem, key: /nonexistent.key}\n", "must not offer STARTTLS"),
        ("tls: {cert: /nonexistent.pem}\n", "needs both cert and key"),
        ("dry_run: yes\n", "expected true or false"),
        ("- a list\n", "expected a mapping"),
        ("log: {target: file}\n", "not one of"),
        ("headers: {strip: ['X Bad']}\n", "'X Bad' is not a header name"),
        ("headers: {original_flag: 'X-Orig:'}\n", "is not a header name"),
    ],
)
def test_config_problems(tmp_path, text, problem):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    messages = [str(p) for p in caught.value.problems]
    assert any(problem in m for m in messages), messages
    assert all(m.startswith(str(tmp_path / "smtpfilter.yaml")) for m in messages)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90), ("90", 90), ("90s", 90), ("500ms", 0.5), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("2w", 1209600), ("1.5h", 5400)],
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [True, -1, "1y", "d30", "", "30 days"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_sizes():
    assert parse_size(100) == 100
    assert parse_size("512k") == 524288
    assert parse_size("10M") == 10485760
    with pytest.raises(ValueError):
        parse_size("ten")


def test_parse_hostport():
    assert parse_hostport("[2001:db8::1]:25") == HostPort("2001:db8::1", 25)
    assert parse_hostport("127.0.0.1", default_port=53) == HostPort("127.0.0.1", 53)
    with pytest.raises(ValueError):
        parse_hostport(":25")


def test_dns_budget_must_fit_the_scan_budget(tmp_path):
    with pytest.raises(ConfigError, match="must be shorter than limits.scan_timeout"):
        load(tmp_path, "dns: {message_timeout: 30s}\nlimits: {scan_timeout: 20s}\n")


def test_operations_settings(tmp_path):
    config = load(tmp_path, "limits: {shutdown_timeout: 45s}\nlog: {target: syslog, syslog_socket: /run/log}\n")
    assert config.limits.shutdown_timeout == 45
    assert (config.log.target, config.log.syslog_socket) == ("syslog", "/run/log")
    assert load_config(None).log.syslog_socket == "/dev/log"
    with pytest.raises(ConfigError) as error:
        load(tmp_path, "log: {syslog_socket: dev/log}\n")
    assert "syslog_socket: 'dev/log': expected an absolute path" in str(error.value)


def test_the_milter_section(tmp_path):
    from smtpfilter.config.settings import parse_milter_listen

    assert str(load_config(None).milter.listen) == "inet:127.0.0.1:11332"
    config = load(tmp_path, "milter: {listen: 'unix:/run/smtpfilter/milter.sock', "
                            "quarantine: store, timeout: 90s}\n")
    assert (config.milter.listen.path, config.milter.quarantine, config.milter.timeout) == (
        "/run/smtpfilter/milter.sock", "store", 90.0)
    assert parse_milter_listen("inet:[::1]:11332").host == "::1"
    assert not parse_milter_listen("inet:192.0.2.1:11332").is_loopback
    for bad in ("11332", "inet:127.0.0.1", "tcp:127.0.0.1:1", "inet:h:99999", "unix:",
                "unix:relative.sock", "inet:11332@localhost"):
        with pytest.raises(ValueError):
            parse_milter_listen(bad)
    with pytest.raises(ConfigError, match=r"smtpfilter.yaml:1: unknown key 'milter.lissen'; did you mean 'milter.listen'"):
        load(tmp_path, "milter: {lissen: 'inet:127.0.0.1:1'}\n")
