"""Typed settings, validated once at start and at each reload.

Every key has a default that is right for a Debian Postfix with FILTER_README's advanced setup,
so ``smtpfilter serve`` runs with no file at all. A config file overrides what it names; unknown
keys, wrong types and impossible combinations are reported together, each with ``file:line``.

```yaml
listen: 127.0.0.1:10025          # where Postfix's "scan" transport connects
forward: 127.0.0.1:10026         # Postfix's after-filter smtpd
hostname: smtpfilter.example.org # our banner and our EHLO to 10026; distinct from Postfix's
rules: [/etc/smtpfilter/rules]   # files or directories of *.yaml, in order
```
The README documents every section; ``smtpfilter check-config`` validates a file.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smtpfilter.config.options import ConfigError, Options, Problem
from smtpfilter.config.postconf import Postconf, PostconfError
from smtpfilter.config.yamlfile import Mapping, YamlError, load_file
from smtpfilter.core.verdict import Action

__all__ = [
    "Config",
    "ConfigError",
    "DnsConfig",
    "HeadersConfig",
    "HostPort",
    "Limits",
    "LogConfig",
    "MetricsConfig",
    "PolicyConfig",
    "PostfixConfig",
    "QuarantineConfig",
    "TlsConfig",
    "load_config",
    "parse_hostport",
    "shipped_rules_dir",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
# Postfix's smtp_data_done_timeout: from our receipt of "." to Postfix giving up on our reply.
# If it expires after we re-injected, the message is delivered twice.
POSTFIX_DATA_DONE_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_hostport(text: str, default_port: int | None = None) -> HostPort:
    """``127.0.0.1:10025``, ``[::1]:10025``, ``localhost:10026``; ValueError otherwise."""
    text = text.strip()
    if default_port is not None:
        try:
            return HostPort(str(ipaddress.ip_address(text)), default_port)  # a bare address
        except ValueError:
            pass
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: missing ']' after an IPv6 address")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':port' after ']'")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:10025")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r}: missing host (use 127.0.0.1, not an empty host)")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r}: missing port, e.g. {host}:10025")
        return HostPort(host, default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: {port_text!r} is not a port number")
    return HostPort(host, int(port_text))


DEFAULT_LISTEN = HostPort("127.0.0.1", 10025)  # FILTER_README's content filter port
DEFAULT_FORWARD = HostPort("127.0.0.1", 10026)  # FILTER_README's after-filter smtpd


@dataclass(frozen=True, slots=True)
class Limits:
    # Announced as SIZE and checked at MAIL; 0: no fixed maximum. By default it is Postfix's
    # message_size_limit (follows_postfix, read at start and reload): after the queue a
    # smaller limit of ours makes Postfix bounce mail it has already accepted (issue 12).
    message_size: int = 10_240_000  # Postfix's own default
    follows_postfix: bool = True  # False: limits.message_size set in the config
    header_size: int = 1 << 20  # how much of the header section the rules look at
    # Per process. At least the scan transport's maxproc (20 in master.cf.example) after queue,
    # the port-25 smtpd's (default_process_limit, 100) before queue; idle sessions make room.
    sessions: int = 100
    recipients: int = 1000  # Postfix's smtpd_recipient_limit default
    idle_timeout: float = 300.0  # Postfix's smtpd_timeout: a silent client is dropped
    scan_timeout: float = 60.0  # all rules of one message, DNS included
    connect_timeout: float = 10.0  # to 10026
    command_timeout: float = 120.0  # 10026's reply to EHLO, XFORWARD, MAIL, RCPT, DATA, RSET
    data_timeout: float = 300.0  # 10026's reply to "."
    pool_size: int = 20  # idle 10026 connections kept for reuse
    pool_idle: float = 30.0  # ...for at most this long (10026's smtpd drops idle ones at 300 s)
    # SIGTERM: how long messages in flight may take to finish (systemd's TimeoutStopSec,
    # 90 s by default, must be longer).
    shutdown_timeout: float = 30.0

    @property
    def data_size(self) -> int:
        """The most DATA we read (0: no limit). Following Postfix, only a guard for memory at
        twice its limit: what Postfix queued fits its limit in its own measure, and it never
        hands us more, while our count (the wire bytes: CRLF line ends, dot-stuffing, the
        headers Postfix and its milters added) is a little larger; a 552 there would be a
        bounce. A limit set in the config is exact: a 552 is what was asked for (before the
        queue, the client gets it)."""
        return self.message_size * 2 if self.follows_postfix else self.message_size


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Score thresholds (rspamd's actions.conf): the highest threshold reached decides."""

    thresholds: tuple[tuple[float, Action], ...] = ()


@dataclass(frozen=True, slots=True)
class HeadersConfig:
    """The headers we add, and what becomes of incoming ones of the same names.

    Incoming ``strip`` headers are removed from every message we deliver: by default our
    status header, which nobody else writes, so that a sender cannot pre-forge our verdict.
    An incoming ``flag`` (X-Spam-Flag, which many spam filters write) is kept as it is, so a
    DKIM signature that covers it still verifies; only when we add our own flag is it renamed
    to ``original_flag``, so that the message carries one X-Spam-Flag, ours, whichever
    occurrence a mail reader looks at (README, "Headers").
    """

    flag: str = "X-Spam-Flag"  # "YES" on tagged messages
    status: str = "X-Smtpfilter-Status"  # "Yes, score=6 rules=..." ("No, ..." with add_status: always)
    add_status: str = "tagged"  # tagged | always | never
    strip: tuple[str, ...] | None = None  # None: (status,)
    original_flag: str = "X-Original-Spam-Flag"  # "": an upstream flag stays beside ours

    @property
    def stripped(self) -> tuple[str, ...]:
        """Incoming headers removed from every message we deliver."""
        if self.strip is not None:
            return self.strip
        return (self.status,) if self.status else ()

    def incoming(
        self, added: tuple[tuple[str, str], ...]
    ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """(strip, rename) for core.wire.outgoing, for a message we deliver with ``added``."""
        stripped = self.stripped
        flag = self.flag.lower()
        if (
            self.flag
            and self.original_flag
            and any(name.lower() == flag for name, _ in added)
            and flag not in {name.lower() for name in stripped}
        ):
            return stripped, ((self.flag, self.original_flag),)
        return stripped, ()


@dataclass(frozen=True, slots=True)
class DnsConfig:
    nameservers: tuple[HostPort, ...] = ()  # empty: /etc/resolv.conf
    timeout: float = 2.0  # one lookup
    message_timeout: float = 5.0  # all lookups for one message
    on_error: str = "ignore"  # ignore (not listed, logged) | tempfail
    # Cached answers live for their TTL clamped to these, like postscreen_dnsbl_min_ttl (60s)
    # and postscreen_dnsbl_max_ttl (1h).
    min_ttl: float = 60.0
    max_ttl: float = 3600.0
    cache_size: int = 10_000  # answers kept; the least recently used go first
    health_interval: float = 300.0  # RFC 5782 test-point probes of every zone in use


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus text on http://listen/metrics; None (the default) serves nothing."""

    listen: HostPort | None = None


@dataclass(frozen=True, slots=True)
class QuarantineConfig:
    """Where ``action: quarantine`` keeps messages: a Maildir (tmp/, new/, cur/) plus meta/ with
    one JSON file per message (envelope and verdict), created on first use, mode 0700."""

    directory: Path = Path("/var/lib/smtpfilter/quarantine")


@dataclass(frozen=True, slots=True)
class PostfixConfig:
    """The Postfix instance we filter for, and what we read from its configuration."""

    config_directory: Path | None = None  # None: postconf's default (/etc/postfix)
    message_size_limit: int | None = None  # Postfix's, 0 = none; None: could not be read
    read: str = "not read"  # how it was read, or why not (check-config and doctor say it)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class LogConfig:
    target: str = "stderr"  # stderr (journald) | syslog (facility mail, ident smtpfilter)
    level: str = "info"
    # The local syslog daemon's socket (rsyslog and journald both listen here).
    syslog_socket: str = "/dev/log"


def _default_hostname() -> str:
    # Distinct from Postfix's myhostname (normally the host's own name), so Received: lines
    # and logs show which pass is which; spampd's docs require it.
    return f"smtpfilter.{socket.gethostname() or 'localdomain'}"


def shipped_rules_dir() -> Path:
    """The rules/ directory that came with this installation."""
    here = Path(__file__).resolve().parent
    candidates = [
        here.parents[1] / "rules",  # a source checkout or an editable install
        Path(sys.prefix) / "share" / "smtpfilter" / "rules",
        Path("/usr/local/share/smtpfilter/rules"),
        Path("/usr/share/smtpfilter/rules"),
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


@dataclass(frozen=True, slots=True)
class Config:
    source: str | None = None
    listen: HostPort = DEFAULT_LISTEN
    forward: HostPort = DEFAULT_FORWARD
    hostname: str = field(default_factory=_default_hostname)
    rules: tuple[Path, ...] = field(default_factory=lambda: (shipped_rules_dir(),))
    allow_clients: tuple[Network, ...] = LOOPBACK
    xforward_clients: tuple[Network, ...] = LOOPBACK
    dry_run: bool = False
    event_loop: str = "auto"  # auto (uvloop when installed) | asyncio | uvloop
    limits: Limits = Limits()
    policy: PolicyConfig = PolicyConfig()
    headers: HeadersConfig = HeadersConfig()
    dns: DnsConfig = DnsConfig()
    tls: TlsConfig | None = None
    log: LogConfig = LogConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    metrics: MetricsConfig = MetricsConfig()
    postfix: PostfixConfig = PostfixConfig()

    def size_disagreement(self) -> str | None:
        """Why limits.message_size set below Postfix's message_size_limit turns accepted mail
        into bounces after the queue, or None when the two agree."""
        ours, theirs = self.limits.message_size, self.postfix.message_size_limit
        if self.limits.follows_postfix or theirs is None or ours == 0:
            return None
        if theirs != 0 and ours >= theirs:
            return None
        shown = "no limit" if theirs == 0 else str(theirs)
        return (
            f"limits.message_size ({ours}) is below Postfix's message_size_limit ({shown}, "
            f"{self.postfix.read}): after the queue, Postfix bounces the mail in between that "
            f"it has already accepted (552 5.3.4 message size exceeds size limit of server); "
            f"remove limits.message_size to follow Postfix, or raise both together. (Before "
            f"the queue, smtpd_proxy_filter, a 552 to the sending client is right.)"
        )

    def with_overrides(self, *, listen: str | None = None, forward: str | None = None) -> "Config":
        problems = []
        changes: dict[str, Any] = {}
        for key, value in (("listen", listen), ("forward", forward)):
            if value is None:
                continue
            try:
                changes[key] = parse_hostport(value)
            except ValueError as error:
                problems.append(Problem(f"--{key}", str(error)))
        if problems:
            raise ConfigError(problems)
        return replace(self, **changes)


_TOP_KEYS = (
    "listen",
    "forward",
    "hostname",
    "rules",
    "allow_clients",
    "xforward_clients",
    "dry_run",
    "event_loop",
    "limits",
    "policy",
    "headers",
    "dns",
    "tls",
    "log",
    "quarantine",
    "metrics",
    "postfix",
)


def _networks(opts: Options, key: str, default: tuple[Network, ...]) -> tuple[Network, ...]:
    items = opts.str_list(key)
    if items is None:
        return default
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            opts.problem(key, f"{item!r} is not an address or network such as 127.0.0.0/8")
    return tuple(networks)


def _hostport(opts: Options, key: str, default: HostPort) -> HostPort:
    text = opts.str(key)
    if text is None:
        return default
    try:
        return parse_hostport(text)
    except ValueError as error:
        opts.problem(key, str(error))
        return default


def _hostname(opts: Options) -> str:
    name = opts.str("hostname")
    if name is None:
        return _default_hostname()
    if not name or any(not (c.isalnum() or c in "-._") for c in name):
        opts.problem("hostname", f"{name!r} is not a host name (letters, digits, '-', '.')")
        return _default_hostname()
    return name


def _event_loop(opts: Options) -> str:
    choice = opts.choice("event_loop", ("auto", "asyncio", "uvloop"), "auto")
    if choice == "uvloop" and not uvloop_available():
        opts.problem("event_loop", "uvloop is not installed (pip install 'smtpfilter[fast]')")
        return "asyncio"
    return choice


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _limits(opts: Options) -> Limits:
    d = Limits()
    follows = opts.raw("message_size") in (None, "postfix")
    limits = Limits(
        message_size=d.message_size if follows else opts.size("message_size", d.message_size),
        follows_postfix=follows,
        header_size=opts.size("header_size", d.header_size),
        sessions=opts.integer("sessions", d.sessions, minimum=1),
        recipients=opts.integer("recipients", d.recipients, minimum=1),
        idle_timeout=opts.duration("idle_timeout", d.idle_timeout, positive=True),
        scan_timeout=opts.duration("scan_timeout", d.scan_timeout, positive=True),
        connect_timeout=opts.duration("connect_timeout", d.connect_timeout, positive=True),
        command_timeout=opts.duration("command_timeout", d.command_timeout, positive=True),
        data_timeout=opts.duration("data_timeout", d.data_timeout, positive=True),
        pool_size=opts.integer("pool_size", d.pool_size, minimum=0),
        pool_idle=opts.duration("pool_idle", d.pool_idle, positive=True),
        shutdown_timeout=opts.duration("shutdown_timeout", d.shutdown_timeout, positive=True),
    )
    opts.finish()
    if limits.scan_timeout + limits.data_timeout >= POSTFIX_DATA_DONE_TIMEOUT:
        opts.problem(
            "data_timeout",
            f"scan_timeout + data_timeout must stay below Postfix's smtp_data_done_timeout "
            f"({POSTFIX_DATA_DONE_TIMEOUT:g}s), or Postfix may give up after 10026 queued the "
            f"message and deliver it twice",
        )
    return limits


def _policy(opts: Options) -> PolicyConfig:
    thresholds = []
    actions = (Action.TAG, Action.TEMPFAIL, Action.REJECT, Action.DISCARD, Action.QUARANTINE)
    for action in actions:
        value = opts.number(action.value)
        if value is not None:
            thresholds.append((float(value), action))
    opts.finish()
    return PolicyConfig(tuple(sorted(thresholds, key=lambda t: t[0])))


def _is_header_name(name: str) -> bool:
    # RFC 5322 §3.6.8 ftext: printable ASCII but the colon.
    return bool(name) and ":" not in name and all("!" <= c <= "~" for c in name)


def _headers(opts: Options) -> HeadersConfig:
    d = HeadersConfig()
    flag = opts.str("flag", d.flag)
    status = opts.str("status", d.status)
    original = opts.str("original_flag", d.original_flag)
    strip = opts.str_list("strip")
    for key, name in (("flag", flag), ("status", status), ("original_flag", original)):
        if name and not _is_header_name(name):
            opts.problem(key, f"{name!r} is not a header name")
    for name in strip or ():
        if not _is_header_name(name):
            opts.problem("strip", f"{name!r} is not a header name")
    config = HeadersConfig(
        flag=flag,
        status=status,
        add_status=opts.choice("add_status", ("tagged", "always", "never"), d.add_status),
        strip=tuple(strip) if strip is not None else None,
        original_flag=original,
    )
    opts.finish()
    return config


def _dns(opts: Options) -> DnsConfig:
    d = DnsConfig()
    servers = []
    for item in opts.str_list("nameservers", []):
        try:
            server = parse_hostport(item, default_port=53)
        except ValueError as error:
            opts.problem("nameservers", str(error))
            continue
        try:
            ipaddress.ip_address(server.host)
        except ValueError:
            # A name would need a resolver to find the resolver; dnspython would only time out.
            opts.problem("nameservers", f"{item!r} is not an IP address")
            continue
        servers.append(server)
    config = DnsConfig(
        nameservers=tuple(servers),
        timeout=opts.duration("timeout", d.timeout, positive=True),
        message_timeout=opts.duration("message_timeout", d.message_timeout, positive=True),
        on_error=opts.choice("on_error", ("ignore", "tempfail"), d.on_error),
        min_ttl=opts.duration("min_ttl", d.min_ttl),
        max_ttl=opts.duration("max_ttl", d.max_ttl, positive=True),
        cache_size=opts.integer("cache_size", d.cache_size, minimum=1),
        health_interval=opts.duration("health_interval", d.health_interval, positive=True),
    )
    opts.finish()
    if config.min_ttl > config.max_ttl:
        opts.problem("min_ttl", f"is longer than max_ttl ({config.max_ttl:g}s)")
    if config.timeout > config.message_timeout:
        opts.problem(
            "timeout", f"is longer than message_timeout ({config.message_timeout:g}s)"
        )
    return config


def _tls(opts: Options, base: Path) -> TlsConfig | None:
    cert = opts.str("cert")
    key = opts.str("key")
    opts.finish()
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        opts.problem(None, "STARTTLS needs both cert and key")
        return None
    config = TlsConfig(base / cert, base / key)
    for name, path in (("cert", config.cert), ("key", config.key)):
        if not path.is_file():
            opts.problem(name, f"{path} does not exist; without it we must not offer STARTTLS")
    return config


def _log(opts: Options) -> LogConfig:
    d = LogConfig()
    config = LogConfig(
        target=opts.choice("target", ("stderr", "syslog"), d.target),
        level=opts.choice("level", ("debug", "info", "warning", "error"), d.level),
        syslog_socket=opts.str("syslog_socket", d.syslog_socket),
    )
    if not config.syslog_socket.startswith("/"):
        opts.problem("syslog_socket", f"{config.syslog_socket!r}: expected an absolute path such as /dev/log")
    opts.finish()
    return config


def _quarantine(opts: Options, base: Path) -> QuarantineConfig:
    directory = opts.str("directory")
    opts.finish()
    if directory is None:
        return QuarantineConfig()
    if not directory:
        opts.problem("directory", "must not be empty")
        return QuarantineConfig()
    return QuarantineConfig(base / directory)


def _metrics(opts: Options) -> MetricsConfig:
    listen = opts.str("listen")
    opts.finish()
    if listen is None:
        return MetricsConfig()
    try:
        where = parse_hostport(listen)
    except ValueError as error:
        opts.problem("listen", str(error))
        return MetricsConfig()
    if not where.is_loopback:
        # The counters name rules and DNS lists; a scraper elsewhere can reach them through
        # a local agent or an SSH tunnel, not through a port we open to the network.
        opts.problem("listen", f"{listen!r}: metrics are served on loopback only "
                     f"(127.0.0.1 or [::1])")
        return MetricsConfig()
    return MetricsConfig(where)


def _postfix(opts: Options, base: Path) -> PostfixConfig:
    directory = opts.str("config_directory")
    opts.finish()
    if directory is not None and not directory:
        opts.problem("config_directory", "must not be empty")
        directory = None
    path = base / directory if directory else None
    try:
        return read_postfix(path)
    except PostconfError as error:
        opts.problem("config_directory", f"cannot read Postfix's configuration: {error}")
        return PostfixConfig(path)


def read_postfix(config_directory: Path | None = None) -> PostfixConfig:
    """Postfix's message_size_limit, with postconf (config/postconf.py); read at every load,
    so a reload picks up a change.

    Without postconf (no Postfix here) there is nothing to follow: None. Without a main.cf in
    the default directory (Postfix installed but not configured, a test machine) Postfix's
    built-in default is what it would use. A config_directory given explicitly must be
    readable: PostconfError."""
    postconf = Postconf(config_directory)
    if postconf.program is None:
        return PostfixConfig(config_directory, None, "postconf not found")
    # Asked only when main.cf exists: postconf's fatal error on a missing one costs a second
    # (msg_fatal sleeps before it exits, so that a daemon cannot respawn in a tight loop).
    if postconf.main_cf().is_file():
        text = postconf.value("message_size_limit")
        read = f"{postconf.where} -h message_size_limit"
    elif config_directory is not None:
        raise PostconfError(f"{postconf.main_cf()}: no such file")
    else:
        text = postconf.value("message_size_limit", default=True)
        read = f"postconf -d: Postfix's default, there is no {postconf.main_cf()}"
    if not text.isdigit():
        raise PostconfError(f"{postconf.where}: message_size_limit = {text!r} is not a number")
    return PostfixConfig(config_directory, int(text), read)


def _follow_postfix(config: Config) -> Config:
    """limits.message_size: postfix → Postfix's message_size_limit (0, no limit, if unknown)."""
    if not config.limits.follows_postfix:
        return config
    size = config.postfix.message_size_limit or 0
    return replace(config, limits=replace(config.limits, message_size=size))


def config_from_mapping(mapping: Mapping, base: Path, source: str | None) -> Config:
    problems: list[Problem] = []
    opts = Options(mapping, problems)
    rules = opts.str_list("rules")
    config = Config(
        source=source,
        listen=_hostport(opts, "listen", DEFAULT_LISTEN),
        forward=_hostport(opts, "forward", DEFAULT_FORWARD),
        hostname=_hostname(opts),
        rules=tuple(base / r for r in rules) if rules is not None else (shipped_rules_dir(),),
        allow_clients=_networks(opts, "allow_clients", LOOPBACK),
        xforward_clients=_networks(opts, "xforward_clients", LOOPBACK),
        dry_run=opts.bool("dry_run"),
        event_loop=_event_loop(opts),
        limits=_limits(opts.section("limits")),
        policy=_policy(opts.section("policy")),
        headers=_headers(opts.section("headers")),
        dns=_dns(opts.section("dns")),
        tls=_tls(opts.section("tls"), base),
        log=_log(opts.section("log")),
        quarantine=_quarantine(opts.section("quarantine"), base),
        metrics=_metrics(opts.section("metrics")),
        postfix=_postfix(opts.section("postfix"), base),
    )
    if config.dns.message_timeout >= config.limits.scan_timeout:
        opts.problem(
            "dns",
            f"dns.message_timeout ({config.dns.message_timeout:g}s) must be shorter than "
            f"limits.scan_timeout ({config.limits.scan_timeout:g}s), or a slow DNS list turns "
            f"every message into a scan timeout (451) instead of 'not listed'",
        )
    opts.finish(_TOP_KEYS)
    if problems:
        raise ConfigError(problems)
    return _follow_postfix(config)


def load_config(path: Path | None) -> Config:
    """The config in ``path``, or the defaults when ``path`` is None."""
    if path is None:
        try:
            return _follow_postfix(Config(postfix=read_postfix()))
        except PostconfError as error:
            raise ConfigError([Problem("postfix", str(error))]) from None
    try:
        data = load_file(path)
    except YamlError as error:
        raise ConfigError([Problem(error.where, error.problem)]) from None
    if data is None:
        data = Mapping(source=str(path), line=1)
    if not isinstance(data, Mapping):
        raise ConfigError([Problem(f"{path}:1", "expected a mapping of settings at the top")])
    return config_from_mapping(data, path.parent, str(path))
