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

import functools
import ipaddress
import os
import socket
import sysconfig
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smtpfilter.config.options import ConfigError, Options, Problem, in_file_order
from smtpfilter.config.postconf import Postconf, PostconfError
from smtpfilter.config.yamlfile import Mapping, YamlError, load_file
from smtpfilter.config.yamlfile import Sequence as YamlList
from smtpfilter.core.verdict import Action

__all__ = [
    "AuthenticationConfig",
    "Config",
    "ConfigError",
    "DnsConfig",
    "HeadersConfig",
    "HostPort",
    "Limits",
    "LogConfig",
    "MetricsConfig",
    "MilterConfig",
    "MilterListen",
    "MimeConfig",
    "PolicyConfig",
    "PostfixConfig",
    "QuarantineConfig",
    "PolicyServiceConfig",
    "StateConfig",
    "TlsConfig",
    "in_networks",
    "load_config",
    "parse_hostport",
    "parse_milter_listen",
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


def in_networks(peer: object, networks: tuple[Network, ...]) -> bool:
    """Whether a peer (an address, or a socket's (host, port, ...) tuple) is in ``networks``
    (allow_clients, xforward_clients); an IPv4-mapped IPv6 address counts as IPv4."""
    try:
        host = peer[0] if isinstance(peer, tuple) else peer
        address = ipaddress.ip_address(str(host).split("%")[0])
    except (ValueError, IndexError, TypeError):
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)

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
            if host.isdigit():
                # "listen: 10025" (Postfix writes a port alone in master.cf): we want the
                # address too, and loopback is the only safe guess (never all interfaces).
                raise ValueError(f"{text!r}: missing address, e.g. 127.0.0.1:{host}")
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
class MimeConfig:
    """How far rules that look inside a message (attachment, body, mime_header, header_checks
    with MIME tables) may go: hard bounds on what one message may cost. Reaching one is the
    parse limit ``mime`` (the ``limits`` rule kind's MIME_LIMIT finding), never an error."""

    max_parts: int = 1000  # MIME parts of any kind, multiparts included
    # Multipart and message/rfc822 nesting; Postfix's mime_nesting_limit is 100.
    max_depth: int = 30
    header_size: int = 100 * 1024  # one part's header block (Postfix's header_size_limit)
    boundary_length: int = 2048  # a boundary is cut here (Postfix's mime_boundary_length_limit)
    text_size: int = 256 * 1024  # decoded bytes of one text part that body rules read
    text_total: int = 2 * 1024 * 1024  # ...and of all text parts of one message
    content_size: int = 16 * 1024 * 1024  # one attachment decoded whole (OLE2, zip members)
    zip_entries: int = 2000  # entries of one zip directory (zipfile: ~3 us each)
    archive_depth: int = 2  # 2: a zip inside a zip is listed, one level deeper is a limit


@dataclass(frozen=True, slots=True)
class AuthenticationConfig:
    """Sender authentication (SPF, DKIM, DMARC: engine/auth/) and our Authentication-Results.

    With ``authserv_id`` every delivered message gets one Authentication-Results header
    (RFC 8601) and incoming ones naming that id are removed; without it, neither happens, and
    the spf, dkim and dmarc rule kinds work all the same.
    """

    authserv_id: str | None = None
    timeout: float = 10.0  # all SPF, DKIM and DMARC DNS of one message
    psl_file: Path | None = None  # the Public Suffix List; None: the one publicsuffixlist ships
    dkim_min_key_bits: int = 1024  # RFC 8301 §3.2: smaller RSA keys are permerror
    dkim_max_signatures: int = 5  # RFC 6376 §6.1: verifiers may limit them; the rest ignored
    # A signature whose l= leaves part of the body unsigned (RFC 6376 §8.2): "policy" (it
    # verifies but vouches for nothing appended), or "pass" as most verifiers say.
    dkim_partial_body: str = "policy"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus text on http://listen/metrics; None (the default) serves nothing."""

    listen: HostPort | None = None


@dataclass(frozen=True, slots=True)
class MilterListen:
    """Where ``smtpfilter milter`` listens, written as main.cf's smtpd_milters names it."""

    family: str  # "inet" | "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.path}"
        return f"inet:[{self.host}]:{self.port}" if ":" in self.host else f"inet:{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.family == "unix" or HostPort(self.host, self.port).is_loopback


def parse_milter_listen(text: str) -> MilterListen:
    """Postfix's own syntax (MILTER_README): ``inet:host:port``, ``inet:[::1]:port``,
    ``unix:/path``; not Sendmail's ``inet:port@host``. ValueError otherwise."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or not rest:
        raise ValueError(f"{text!r}: expected inet:HOST:PORT or unix:/PATH")
    if kind == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{text!r}: the socket path must be absolute (unix:/run/...)")
        return MilterListen("unix", path=rest)
    if kind != "inet":
        raise ValueError(f"{text!r}: expected inet:HOST:PORT or unix:/PATH")
    if "@" in rest:
        raise ValueError(f"{text!r}: that is Sendmail's port@host; Postfix writes inet:HOST:PORT")
    where = parse_hostport(rest)
    return MilterListen("inet", host=where.host, port=where.port)


@dataclass(frozen=True, slots=True)
class MilterConfig:
    """``smtpfilter milter``: Postfix's smtpd asks us during the SMTP session (smtpd_milters)."""

    listen: MilterListen = MilterListen("inet", "127.0.0.1", 11332)  # rspamd's milter port
    # quarantine decisions: "hold" (Postfix's hold queue, SMFIR_QUARANTINE; postsuper -H
    # releases) or "store" (our quarantine directory; the milter then asks for the body).
    quarantine: str = "hold"
    # From end of message to our reply; below Postfix's milter_content_timeout (300 s), or
    # Postfix gives up first and applies milter_default_action.
    timeout: float = 240.0


@dataclass(frozen=True, slots=True)
class QuarantineConfig:
    """Where ``action: quarantine`` keeps messages: a Maildir (tmp/, new/, cur/) plus meta/ with
    one JSON file per message (envelope and verdict), created on first use, mode 0700."""

    directory: Path = Path("/var/lib/smtpfilter/quarantine")


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where rate-limit counters live (engine/state.py): this process's memory, or a Redis or
    Valkey server shared by every worker and every MX host (``redis``: a redis://, rediss:// or
    unix:// URL as redis-py reads it). Every call is bounded by ``timeout`` and never retried;
    after a failure the server is left alone for ``retry``, and the rules fail open (or 451
    with ``on_error: tempfail``). ``hold``: how long a reservation counts when its message is
    never settled (the process died)."""

    redis: str | None = None
    timeout: float = 0.5
    retry: float = 2.0
    hold: float = 600.0
    prefix: str = "smtpfilter:rl:"
    on_error: str = "ignore"  # ignore (skip the rule, logged and counted) | tempfail (451)
    connections: int = 32  # per process; a message waits up to ``timeout`` for a free one


@dataclass(frozen=True, slots=True)
class PolicyServiceConfig:
    """``smtpfilter policy``: Postfix's check_policy_service (SMTPD_POLICY_README)."""

    listen: HostPort = HostPort("127.0.0.1", 10040)
    # end-of-message: count at END-OF-MESSAGE (needs the smtpd_end_of_data_restrictions hook);
    # rcpt: count when RCPT passes (without that hook; a message refused later still counts).
    count_at: str = "end-of-message"


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


@functools.cache
def shipped_rules_dir() -> Path:
    """The rules/ directory that came with this installation, wherever the installer put it.

    In this order: a source checkout, or an editable install of one (rules/ beside
    pyproject.toml); an installed wheel, where its RECORD says the installer wrote
    share/smtpfilter/rules (whatever the scheme: a venv, ``pip install --user`` under
    site.USER_BASE, ``--prefix``, a system install), so nothing is guessed; then the data
    directory of every install scheme Python knows, /usr/local/share and /usr/share (a copy
    without a RECORD, such as a distribution package). Nothing found: where this
    interpreter's own scheme would have put them, so that the error names a likely path.
    """
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "rules").is_dir():
        return checkout / "rules"
    recorded = _recorded_rules_dir(package)
    if recorded is not None:
        return recorded
    share = Path("share", "smtpfilter", "rules")
    candidates = [Path(sysconfig.get_path("data")) / share]
    for scheme in sysconfig.get_scheme_names():
        candidates.append(Path(sysconfig.get_path("data", scheme)) / share)
    candidates += [Path("/usr/local") / share, Path("/usr") / share]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def _recorded_rules_dir(package: Path) -> Path | None:
    """share/smtpfilter/rules as the installer recorded it in the wheel's RECORD
    (importlib.metadata: the file names are relative to site-packages, ``../../../share/...``
    in a venv or a --user install)."""
    import importlib.metadata  # ~50 ms of imports, paid only by an installed copy

    try:
        distribution = importlib.metadata.distribution("smtpfilter")
    except importlib.metadata.PackageNotFoundError:
        return None
    # The first smtpfilter on sys.path is normally the one imported; if it is another copy
    # (an old --user install beside a venv's), its rules are not ours.
    imported = package / "__init__.py"
    if Path(distribution.locate_file("smtpfilter/__init__.py")).resolve() != imported:
        return None
    for file in distribution.files or ():
        if file.suffix == ".yaml" and file.parent.parts[-3:] == ("share", "smtpfilter", "rules"):
            directory = Path(distribution.locate_file(file)).resolve().parent
            if directory.is_dir():
                return directory
    return None


@dataclass(frozen=True, slots=True)
class Config:
    source: str | None = None
    listen: HostPort = DEFAULT_LISTEN
    forward: HostPort = DEFAULT_FORWARD
    hostname: str = field(default_factory=_default_hostname)
    rules: tuple[Path, ...] = field(default_factory=lambda: (shipped_rules_dir(),))
    # For each of ``rules`` named in the file: (file:line, the path as written), so that
    # "Permission denied" is reported at the line an admin has to look at.
    rules_written: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
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
    milter: MilterConfig = MilterConfig()
    mime: MimeConfig = MimeConfig()
    state: StateConfig = StateConfig()
    policy_service: PolicyServiceConfig = PolicyServiceConfig()
    authentication: AuthenticationConfig = AuthenticationConfig()
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
    "milter",
    "mime",
    "state",
    "policy_service",
    "authentication",
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


# Postfix's milter_content_timeout: from the first header to our reply at end of message.
POSTFIX_MILTER_CONTENT_TIMEOUT = 300.0


def _milter(opts: Options) -> MilterConfig:
    d = MilterConfig()
    listen = d.listen
    text = opts.str("listen")
    if text is not None:
        try:
            listen = parse_milter_listen(text)
        except ValueError as error:
            opts.problem("listen", str(error))
    config = MilterConfig(
        listen=listen,
        quarantine=opts.choice("quarantine", ("hold", "store"), d.quarantine),
        timeout=opts.duration("timeout", d.timeout, positive=True),
    )
    opts.finish()
    if config.timeout >= POSTFIX_MILTER_CONTENT_TIMEOUT:
        opts.problem("timeout", f"must stay below Postfix's milter_content_timeout "
                     f"({POSTFIX_MILTER_CONTENT_TIMEOUT:g}s), or Postfix gives up first")
    return config


def _mime(opts: Options) -> MimeConfig:
    d = MimeConfig()
    config = MimeConfig(
        max_parts=opts.integer("max_parts", d.max_parts, minimum=1),
        max_depth=opts.integer("max_depth", d.max_depth, minimum=1),
        header_size=opts.size("header_size", d.header_size),
        boundary_length=opts.integer("boundary_length", d.boundary_length, minimum=1),
        text_size=opts.size("text_size", d.text_size),
        text_total=opts.size("text_total", d.text_total),
        content_size=opts.size("content_size", d.content_size),
        zip_entries=opts.integer("zip_entries", d.zip_entries, minimum=1),
        archive_depth=opts.integer("archive_depth", d.archive_depth, minimum=1),
    )
    opts.finish()
    return config


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _state(opts: Options) -> StateConfig:
    d = StateConfig()
    url = opts.str("redis")
    config = StateConfig(
        redis=url or None,
        timeout=opts.duration("timeout", d.timeout, positive=True),
        retry=opts.duration("retry", d.retry, positive=True),
        hold=opts.duration("hold", d.hold, positive=True),
        prefix=opts.str("prefix", d.prefix),
        on_error=opts.choice("on_error", ("ignore", "tempfail"), d.on_error),
        connections=opts.integer("connections", d.connections, minimum=1),
    )
    opts.finish()
    if url is not None:
        problem = _redis_url_problem(url)
        if problem:
            opts.problem("redis", f"{url!r}: {problem}")
            config = replace(config, redis=None)
    return config


def _check_state(opts: Options, config: Config) -> None:
    state, limits = config.state, config.limits
    if state.redis is not None and state.timeout >= limits.scan_timeout:
        opts.problem("state", f"timeout ({state.timeout:g}s) must be shorter than "
                     f"limits.scan_timeout ({limits.scan_timeout:g}s), or a slow Redis turns "
                     f"every message into a scan timeout (451) instead of a skipped rule")
    if state.hold <= limits.scan_timeout + limits.data_timeout:
        # A reservation must outlive the message it was made for: from the rules to 10026's
        # answer to "." (engine/state.py: then it is confirmed or released).
        opts.problem("state", f"hold ({state.hold:g}s) must be longer than "
                     f"limits.scan_timeout + limits.data_timeout "
                     f"({limits.scan_timeout + limits.data_timeout:g}s)")


def _redis_url_problem(url: str) -> str | None:
    """Why redis-py could not use ``url``, or None (its syntax: redis://[[user]:password@]host
    [:port][/db], rediss:// for TLS, unix:///path/to/socket[?db=N])."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return str(error)
    if parts.scheme not in _REDIS_SCHEMES:
        return "expected redis://host:port/db, rediss://host:port/db or unix:///path"
    if parts.scheme == "unix":
        return None if parts.path.startswith("/") else "unix:// needs an absolute socket path"
    if not parts.hostname:
        return "missing host, e.g. redis://127.0.0.1:6379/0"
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        return f"the database after the host is a number, not {db!r}"
    del port  # parsed for its ValueError only
    return None


def _policy_service(opts: Options) -> PolicyServiceConfig:
    d = PolicyServiceConfig()
    config = PolicyServiceConfig(
        listen=_hostport(opts, "listen", d.listen),
        count_at=opts.choice("count_at", ("end-of-message", "rcpt"), d.count_at),
    )
    opts.finish()
    return config


def _authentication(opts: Options, base: Path) -> AuthenticationConfig:
    d = AuthenticationConfig()
    authserv_id = opts.str("authserv_id")
    if authserv_id is not None and (
        not authserv_id or any(not (c.isalnum() or c in "-._") for c in authserv_id)
    ):
        # RFC 8601 §2.5: "typically a domain name"; it is matched against incoming fields to
        # remove forged ones, so nothing that would need quoting.
        opts.problem("authserv_id", f"{authserv_id!r} is not a host name (letters, digits, "
                     f"'-', '.'), e.g. mx.example.org")
        authserv_id = None
    psl_file = opts.str("psl_file")
    psl_path = base / psl_file if psl_file else None
    if psl_path is not None and not psl_path.is_file():
        opts.problem("psl_file", f"{psl_path} does not exist (Debian: apt install publicsuffix, "
                     f"/usr/share/publicsuffix/public_suffix_list.dat)")
    elif psl_path is not None and not os.access(psl_path, os.R_OK):
        # Read on the first DMARC check, not now: unreadable, every such message would be a 451.
        opts.problem("psl_file", f"{psl_path}: Permission denied (as uid {os.geteuid()})")
    dkim = opts.section("dkim")
    config = AuthenticationConfig(
        authserv_id=authserv_id,
        timeout=opts.duration("timeout", d.timeout, positive=True),
        psl_file=psl_path,
        dkim_min_key_bits=dkim.integer("min_key_bits", d.dkim_min_key_bits, minimum=512),
        dkim_max_signatures=dkim.integer("max_signatures", d.dkim_max_signatures, minimum=1),
        dkim_partial_body=dkim.choice("partial_body", ("policy", "pass"), d.dkim_partial_body),
    )
    dkim.finish()
    opts.finish()
    return config


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


def _rules_written(mapping: Mapping, rules: list[str] | None) -> tuple[tuple[str, str], ...]:
    """(file:line, text) of each ``rules`` entry: a list item's own line when it has one."""
    if rules is None:
        return ()
    items = mapping.get("rules")
    if isinstance(items, YamlList):
        return tuple((items.where(i), text) for i, text in enumerate(rules))
    return tuple((mapping.where("rules"), text) for text in rules)


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
        rules_written=_rules_written(mapping, rules),
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
        milter=_milter(opts.section("milter")),
        mime=_mime(opts.section("mime")),
        state=_state(opts.section("state")),
        policy_service=_policy_service(opts.section("policy_service")),
        authentication=_authentication(opts.section("authentication"), base),
        postfix=_postfix(opts.section("postfix"), base),
    )
    _check_state(opts, config)
    if opts.has("authentication") and config.authentication.timeout >= config.limits.scan_timeout:
        opts.problem(
            "authentication",
            f"authentication.timeout ({config.authentication.timeout:g}s) must be shorter than "
            f"limits.scan_timeout ({config.limits.scan_timeout:g}s): slow DNS must end in "
            f"temperror for the rules, not in a scan timeout (451)",
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
        raise ConfigError(in_file_order(problems))
    return _follow_postfix(config)


def load_config(path: Path | None) -> Config:
    """The config in ``path``, or the defaults when ``path`` is None."""
    if path is None:
        try:
            return _follow_postfix(Config(postfix=read_postfix()))
        except PostconfError as error:
            raise ConfigError([Problem("postfix", str(error))]) from None
    if path.is_dir():
        raise ConfigError([Problem(str(path), "is a directory; --config names the YAML file, "
                                   "e.g. /etc/smtpfilter/smtpfilter.yaml")])
    try:
        data = load_file(path)
    except YamlError as error:
        raise ConfigError([Problem(error.where, error.problem)]) from None
    if data is None:
        data = Mapping(source=str(path), line=1)
    if not isinstance(data, Mapping):
        raise ConfigError([Problem(f"{path}:1", "expected a mapping of settings at the top")])
    return config_from_mapping(data, path.parent, str(path))
