"""``smtpfilter doctor``: Postfix's side of the integration, checked the way an expert would.

The mistakes every content filter's users make are in Postfix's configuration, where the
filter cannot see them at run time: a content_filter that points elsewhere, a 10026 smtpd that
filters again (a loop) or drops XFORWARD, a scan transport that folds long lines (DKIM breaks)
or offers more sessions than we serve, a size limit below Postfix's (bounces after the queue),
the same host name on both passes, SMTP smuggling left open in front of us. This reads
Postfix's configuration with postconf(1) (``config/postconf.py``: main.cf parameters, master.cf
entries and their ``-o`` overrides, ``-c DIR`` for another instance), never changes it, and
reports each finding as one line with what to change. No finding: the examples of
master.cf.example and main.cf.example as written.

What is checked, by how mail reaches us (the modes of master.cf.example):

- routes: ``content_filter`` (main.cf, smtpd ``-o``) and FILTER actions of the access maps in
  the smtpd restrictions name a transport of master.cf; an smtp/lmtp one must deliver to our
  ``listen`` (after-queue), a pipe(8) one must run ``smtpfilter pipe``; ``smtpd_proxy_filter``
  must be our ``listen`` (before-queue); no milter may point at it (we speak SMTP there);
  something must route mail to us at all;
- the re-injection smtpd at our ``forward``: it exists, listens on loopback only, has no
  content_filter or proxy filter of its own (a loop), takes XFORWARD from us, and after the
  queue skips milters and header/body checks (they ran on the first pass; before the queue
  they run there, so it must not skip them);
- the scan transport: ``smtp_line_length_limit = 0``, ``disable_mime_output_conversion = yes``,
  ``smtp_send_xforward_command = yes``, a maxproc within ``limits.sessions``, and a
  ``smtp_data_done_timeout`` above our ``scan_timeout + data_timeout``; before the queue, the
  proxying smtpd's maxproc and ``smtpd_proxy_timeout`` likewise;
- ``message_size_limit`` against ``limits.message_size`` (after the queue), our ``hostname``
  against ``myhostname``, and ``smtpd_forbid_bare_newline`` on every smtpd clients reach.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from smtpfilter.config.options import parse_duration
from smtpfilter.config.postconf import Postconf, Service
from smtpfilter.config.settings import Config, HostPort
from smtpfilter.postfix.tables import read_table

__all__ = ["Finding", "Report", "diagnose"]

# The smtpd restriction lists whose check_*_access tables may hold FILTER actions (access(5)).
_RESTRICTIONS = (
    "smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
    "smtpd_relay_restrictions", "smtpd_recipient_restrictions", "smtpd_data_restrictions",
    "smtpd_end_of_data_restrictions",
)
_MILTERS = ("smtpd_milters", "non_smtpd_milters")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong: where (main.cf, a master.cf entry, our config), what and why, and
    what to change."""

    where: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}; {self.fix}"


@dataclass(slots=True)
class Report:
    postfix: str  # "Postfix 3.7.11 (postconf -c /etc/postfix)"
    routes: list[str] = field(default_factory=list)  # how mail reaches us, one line each
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Route:
    mode: str  # after-queue | pipe | before-queue | milter
    via: str  # 'main.cf content_filter = scan:[127.0.0.1]:10025'
    service: "Service | None"  # the scan or pipe transport, the proxying smtpd, a milter's smtpd


def diagnose(config: Config, postconf: Postconf) -> Report:
    """Every finding about how ``postconf``'s Postfix is wired to smtpfilter with ``config``.
    PostconfError when postconf cannot read the configuration at all."""
    doctor = _Doctor(config, postconf)
    doctor.run()
    return doctor.report


class _Doctor:
    def __init__(self, config: Config, postconf: Postconf) -> None:
        self.config = config
        self.postconf = postconf
        self.main = postconf.parameters()
        self.services = postconf.services()
        version = self.main.get("mail_version", "?")
        self.report = Report(f"Postfix {version} ({postconf.where})")
        self.routes: list[_Route] = []
        self.misrouted = False  # something names a filter that is not where we listen

    def problem(self, where: str, problem: str, fix: str) -> None:
        self.report.findings.append(Finding(where, problem, fix))

    def effective(self, service: Service | None, name: str) -> str:
        """A parameter as ``service`` sees it: its -o override, else main.cf's value."""
        if service is not None and name in service.options:
            return service.options[name]
        return self.main.get(name, "")

    def service(self, name: str, kind: str) -> Service | None:
        found = [s for s in self.services if s.name == name and s.type == kind]
        return found[-1] if found else None  # master(5): the last entry of a name wins

    def smtpds(self) -> list[Service]:
        return [s for s in self.services if s.command == "smtpd" and s.type in ("inet", "pass")]

    # --- the whole check ---------------------------------------------------------------
    def run(self) -> None:
        self.find_routes()
        modes = {route.mode for route in self.routes}
        # Milter mode has no second smtpd: the reinject checks are for the other modes.
        reinject = self.check_reinject(modes) if modes - {"milter"} else None
        for route in self.routes:
            if route.mode == "after-queue":
                self.check_scan_transport(route)
            elif route.mode == "before-queue":
                self.check_proxy(route)
        if modes & {"after-queue", "pipe"}:
            self.check_size()
        self.check_hostname()
        self.check_bare_newlines(reinject)

    # --- routes: how mail reaches us ---------------------------------------------------
    def find_routes(self) -> None:
        listen = self.config.listen
        filters: list[tuple[str, str]] = []  # (where, "transport:nexthop")
        if self.main.get("content_filter"):
            filters.append(("main.cf content_filter", self.main["content_filter"]))
        for smtpd in self.smtpds():
            value = smtpd.options.get("content_filter")
            if value:
                filters.append((f"master.cf {smtpd.label} -o content_filter", value))
        filters += self.filter_actions()
        for where, value in filters:
            self.route_for_filter(where, value, listen)
        proxies = []
        if self.main.get("smtpd_proxy_filter"):
            proxies += [("main.cf smtpd_proxy_filter", self.main["smtpd_proxy_filter"], s)
                        for s in self.smtpds() if "smtpd_proxy_filter" not in s.options]
        for smtpd in self.smtpds():
            value = smtpd.options.get("smtpd_proxy_filter")
            if value:
                proxies.append((f"master.cf {smtpd.label} -o smtpd_proxy_filter", value, smtpd))
        for where, value, smtpd in proxies:
            if _same(_address(value), listen):
                self.routes.append(_Route("before-queue", f"{where} = {value}", smtpd))
                self.report.routes.append(f"before-queue: {where} = {value} (smtpd {smtpd.label})")
            else:
                self.misrouted = True
                self.problem(where, f"{value} is not where smtpfilter listens ({listen})",
                             f"set it to {listen}, or listen: {value} in smtpfilter's config")
        self.check_milters(listen)
        if not self.routes and not self.misrouted:
            self.problem(
                "main.cf", f"nothing sends mail to smtpfilter on {listen} (no content_filter, "
                f"FILTER action or smtpd_proxy_filter names it)",
                "set content_filter = scan:[127.0.0.1]:10025 and append the scan and reinject "
                "blocks of master.cf.example (README, Install into Postfix, step 4)")

    def route_for_filter(self, where: str, value: str, listen: HostPort) -> None:
        transport, _, nexthop = value.partition(":")
        service = self.service(transport, "unix")
        if service is None:
            self.misrouted = True
            self.problem(where, f"{value}: master.cf has no transport {transport!r}",
                         "append the scan block of master.cf.example, or fix the name")
            return
        said = f"{where} {value}" if where.endswith("FILTER") else f"{where} = {value}"
        if service.command == "pipe":
            if any("smtpfilter" in arg for arg in service.args) and "pipe" in service.args:
                self.routes.append(_Route("pipe", said, service))
                self.report.routes.append(f"pipe: {said} (pipe(8) runs smtpfilter pipe)")
            return
        if service.command not in ("smtp", "lmtp"):
            return  # some other filter: not ours to judge
        if _same(_address(nexthop, default_port=25), listen):
            self.routes.append(_Route("after-queue", said, service))
            self.report.routes.append(f"after-queue: {said} (transport {service.label})")
        else:
            self.misrouted = True
            self.problem(where, f"{value} delivers to {nexthop or 'its own next hop'}, not to "
                         f"where smtpfilter listens ({listen})",
                         f"use {transport}:[{listen.host}]:{listen.port}, or listen: in "
                         f"smtpfilter's config")

    def filter_actions(self) -> list[tuple[str, str]]:
        """FILTER actions (access(5)) of the check_*_access tables in the smtpd restrictions,
        as (where, transport:nexthop); tables postmap cannot list are left out."""
        tables = []
        for smtpd in [None, *self.smtpds()]:
            for name in _RESTRICTIONS:
                words = re.split(r"[\s,]+", self.effective(smtpd, name))
                tables += [table for check, table in zip(words, words[1:])
                           if re.fullmatch(r"check_\w+_access", check)]
        found = []
        for table in dict.fromkeys(tables):
            for key, action in _dump_table(self.postconf, table):
                word, _, target = action.partition(" ")
                if word.upper() == "FILTER" and target.strip():
                    found.append((f"{table}: {key} FILTER", target.strip()))
        return found

    def check_milters(self, listen: HostPort) -> None:
        """smtpd_milters naming where ``smtpfilter milter`` listens is a route of its own
        (milter mode, no second smtpd); one naming our SMTP port is a mistake."""
        wanted = self.config.milter.listen
        for smtpd in [None, *self.smtpds()]:
            for name in _MILTERS:
                if smtpd is not None and name not in smtpd.options:
                    continue
                for milter in re.split(r"[\s,]+", self.effective(smtpd, name)):
                    milter = milter.strip("{}")
                    if not milter:
                        continue
                    where = f"master.cf {smtpd.label} -o {name}" if smtpd else f"main.cf {name}"
                    if _is_milter(milter, wanted):
                        self.routes.append(_Route("milter", f"{where} = {milter}", smtpd))
                        self.report.routes.append(f"milter: {where} = {milter}")
                        self.check_milter_default_action(smtpd)
                    elif _same(_address(milter), listen):
                        self.problem(where, f"{milter} is smtpfilter's SMTP port: it speaks "
                                     f"SMTP there, not the milter protocol",
                                     f"point it at smtpfilter milter ({wanted}), or use "
                                     "content_filter or smtpd_proxy_filter (master.cf.example)")

    def check_milter_default_action(self, smtpd: "Service | None") -> None:
        """What Postfix does when the milter cannot answer: it must keep the mail (tempfail;
        Postfix >= 3.7.20's default "shutdown" also keeps it), never pass it unfiltered
        (accept) nor bounce it (reject)."""
        action = self.effective(smtpd, "milter_default_action").strip()
        if action in ("accept", "reject"):
            where = f"master.cf {smtpd.label}" if smtpd else "main.cf"
            effect = ("mail passes unfiltered whenever smtpfilter milter is down" if action ==
                      "accept" else "mail is refused with 5xx whenever smtpfilter milter is down")
            self.problem(where, f"milter_default_action = {action}: {effect}",
                         "set milter_default_action = tempfail (main.cf.example, block milter)")

    # --- the re-injection smtpd ---------------------------------------------------------
    def check_reinject(self, modes: set[str]) -> Service | None:
        forward = self.config.forward
        found = [s for s in self.services if s.type == "inet" and _same(_address(s.name), forward)]
        if not found:
            self.problem("master.cf", f"no smtpd listens on {forward}, where smtpfilter "
                         f"re-injects mail (every message is deferred)",
                         "append the reinject block of master.cf.example")
            return None
        smtpd = found[-1]
        where = f"master.cf {smtpd.label}"
        if smtpd.command != "smtpd":
            self.problem(where, f"runs {smtpd.command}, not smtpd", "use the reinject block of "
                         "master.cf.example")
            return smtpd
        host = _address(smtpd.name)
        if host is None or not _is_loopback(host.host):
            self.problem(where, "listens beyond loopback: it trusts 127.0.0.0/8 completely and "
                         "is an open relay with forged XFORWARD logs", "listen on 127.0.0.1 only")
        for name, why in (("content_filter", "mail loops back to smtpfilter forever"),
                          ("smtpd_proxy_filter", "mail loops back to smtpfilter forever")):
            value = self.effective(smtpd, name)
            if value:
                self.problem(where, f"{name} = {value}: {why}", f'add "-o {name}="')
        overrides = set(re.split(r"[\s,]+", self.effective(smtpd, "receive_override_options")))
        wanted = ("no_unknown_recipient_checks", "no_header_body_checks", "no_milters")
        if modes & {"after-queue", "pipe"}:
            missing = [w for w in wanted if w not in overrides]
            if missing:
                self.problem(where, f"receive_override_options lacks {', '.join(missing)}: "
                             "milters (a DKIM signer), header/body checks and recipient checks "
                             "run a second time on filtered mail",
                             f'add "-o receive_override_options={",".join(wanted)}"')
        elif {"no_milters", "no_header_body_checks"} & overrides:
            self.problem(where, "receive_override_options skips milters or header_checks, "
                         "which before the queue run only here",
                         'set "-o receive_override_options=no_unknown_recipient_checks" '
                         "(master.cf.example, block before-queue)")
        hosts = self.effective(smtpd, "smtpd_authorized_xforward_hosts")
        if not _covers(hosts, "127.0.0.1"):
            self.problem(where, f"smtpd_authorized_xforward_hosts ({hosts or 'empty'}) does not "
                         "include 127.0.0.1: XFORWARD is refused, every message seems to come "
                         "from localhost", 'add "-o smtpd_authorized_xforward_hosts=127.0.0.0/8"')
        return smtpd

    # --- the way in ---------------------------------------------------------------------
    def check_scan_transport(self, route: _Route) -> None:
        scan = route.service
        where = f"master.cf {scan.label}"
        p = "lmtp" if scan.command == "lmtp" else "smtp"
        limit = self.effective(scan, f"{p}_line_length_limit")
        if limit != "0":
            self.problem(where, f"{p}_line_length_limit = {limit} breaks longer lines on the way "
                         "to smtpfilter, and the DKIM signatures over them",
                         f'add "-o {p}_line_length_limit=0"')
        if self.effective(scan, "disable_mime_output_conversion") != "yes":
            self.problem(where, "8-bit mail may be converted to quoted-printable on this hop, "
                         "which breaks DKIM signatures",
                         'add "-o disable_mime_output_conversion=yes"')
        if self.effective(scan, f"{p}_send_xforward_command") != "yes":
            self.problem(where, "no XFORWARD: smtpfilter and the 10026 smtpd see every message "
                         "as coming from localhost (client rules, DNS lists, logs)",
                         f'add "-o {p}_send_xforward_command=yes"')
        self.check_maxproc(scan, where)
        self.check_timeout(scan, where, f"{p}_data_done_timeout")

    def check_proxy(self, route: _Route) -> None:
        smtpd = route.service
        where = f"master.cf {smtpd.label}"
        self.check_maxproc(smtpd, where)
        self.check_timeout(smtpd, where, "smtpd_proxy_timeout")

    def check_maxproc(self, service: Service, where: str) -> None:
        sessions = self.config.limits.sessions
        text = service.maxproc
        maxproc = self.main.get("default_process_limit", "100") if text == "-" else text
        if maxproc.isdigit() and 0 < int(maxproc) <= sessions:
            return
        shown = "unlimited" if maxproc == "0" else maxproc
        self.problem(where, f"maxproc {shown} is more than smtpfilter's limits.sessions "
                     f"({sessions}): the sessions beyond it get 421 and their mail waits",
                     f"set maxproc to at most {sessions}, or raise limits.sessions")

    def check_timeout(self, service: Service, where: str, name: str) -> None:
        limits = self.config.limits
        ours = limits.scan_timeout + limits.data_timeout
        value = self.effective(service, name)
        try:
            seconds = parse_duration(value)
        except ValueError:
            return
        if seconds <= ours:
            self.problem(where, f"{name} = {value} is not above smtpfilter's scan_timeout + "
                         f"data_timeout ({ours:g}s): Postfix may give up on a message 10026 "
                         "has queued, and deliver it twice",
                         f'set "-o {name}={int(ours * 2)}s" or more (master.cf.example)')

    # --- both sides ---------------------------------------------------------------------
    def check_size(self) -> None:
        text = self.main.get("message_size_limit", "")
        if not text.isdigit():
            return
        theirs, ours = int(text), self.config.limits.message_size
        if ours == 0 or (theirs != 0 and ours >= theirs):
            return
        shown = "no limit" if theirs == 0 else str(theirs)
        if self.config.limits.follows_postfix:
            fix = (f"smtpfilter follows another Postfix ({self.config.postfix.read}): set "
                   f"postfix: {{config_directory: {self.postconf.config_directory or '/etc/postfix'}}}")
        else:
            fix = "remove limits.message_size to follow Postfix, or raise both together"
        self.problem("main.cf", f"message_size_limit ({shown}) is above smtpfilter's limit "
                     f"({ours}): after the queue Postfix bounces the mail in between that it "
                     f"has already accepted", fix)

    def check_hostname(self) -> None:
        mine = self.main.get("myhostname", "")
        if mine and mine.lower() == self.config.hostname.lower():
            self.problem(f"{self.config.source or 'smtpfilter config'}",
                         f"hostname {self.config.hostname} is Postfix's myhostname: both "
                         "passes look alike in Received: headers and logs",
                         "set hostname: to a name of its own (smtpfilter.<myhostname>)")

    def check_bare_newlines(self, reinject: Service | None) -> None:
        public = [s for s in self.smtpds() if s is not reinject]
        if not public:
            return
        if "smtpd_forbid_bare_newline" not in self.main:
            self.problem("main.cf", f"Postfix {self.main.get('mail_version', '?')} has no "
                         "smtpd_forbid_bare_newline: SMTP smuggling (CVE-2023-51764) can hide a "
                         "second message with a forged sender in front of smtpfilter",
                         "upgrade Postfix (3.5.24, 3.6.14, 3.7.10, 3.8.5, 3.9 or later)")
            return
        fix = ("set smtpd_forbid_bare_newline = normalize (main.cf.example, block smuggling; "
               "'yes' on Postfix 3.8.4, 3.7.9, 3.6.13, 3.5.23)")
        if self.main["smtpd_forbid_bare_newline"].lower() == "no" and any(
            "smtpd_forbid_bare_newline" not in s.options for s in public
        ):
            self.problem("main.cf", "smtpd_forbid_bare_newline = no: SMTP smuggling "
                         "(CVE-2023-51764) can hide a second message with a forged sender in "
                         "front of smtpfilter", fix)
        for smtpd in public:
            if smtpd.options.get("smtpd_forbid_bare_newline", "").lower() == "no":
                self.problem(f"master.cf {smtpd.label}", "-o smtpd_forbid_bare_newline=no: "
                             "SMTP smuggling can hide a second message here", fix)


# --- small parsers ----------------------------------------------------------------------------
def _address(text: str, default_port: int | None = None) -> HostPort | None:
    """``[127.0.0.1]:10025``, ``127.0.0.1:10025``, ``inet:localhost:10025``, ``[::1]:10025``
    → HostPort; None for unix sockets and what is not an address."""
    text = text.strip()
    if text.startswith("inet:"):
        text = text[5:]
    elif text.startswith(("unix:", "local:")) or not text:
        return None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not port and default_port is not None:
        port = str(default_port)
    if not port.isdigit():
        return None
    return HostPort(host.lower(), int(port))


def _is_milter(text: str, wanted: object) -> bool:
    """Does main.cf's milter address ``text`` name ``wanted`` (config MilterListen)?"""
    if getattr(wanted, "family", "") == "unix":
        return text.startswith(("unix:", "local:")) and text.partition(":")[2] == wanted.path
    return _same(_address(text), HostPort(wanted.host, wanted.port))


def _same(one: HostPort | None, other: HostPort) -> bool:
    if one is None or one.port != other.port:
        return False
    canonical = {"localhost": "127.0.0.1", "[::1]": "::1"}
    return canonical.get(one.host, one.host) == canonical.get(other.host.lower(), other.host.lower())


def _is_loopback(host: str) -> bool:
    return HostPort(host, 0).is_loopback


def _covers(networks: str, address: str) -> bool:
    wanted = ipaddress.ip_address(address)
    for item in re.split(r"[\s,]+", networks):
        item = item.replace("[", "").replace("]", "")
        try:
            if wanted in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue  # a host name or a table: not what we can judge here
    return False


def _dump_table(postconf: Postconf, table: str) -> list[tuple[str, str]]:
    """(key, value) of an indexed table (``postmap -s``), or of a regexp/pcre file's lines;
    nothing when it cannot be read."""
    if table.partition(":")[0] in ("regexp", "pcre"):
        try:
            parsed = read_table(table)
        except OSError:
            return []
        return [(line.text, line.result) for line in parsed.lines if line.kind == "match"]
    if postconf.program is None:
        return []
    postmap = str(Path(postconf.program).with_name("postmap"))
    command = [postmap] + (["-c", str(postconf.config_directory)] if postconf.config_directory else [])
    try:
        done = subprocess.run([*command, "-s", table], capture_output=True, text=True,
                              timeout=30, errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return []
    pairs = []
    for line in done.stdout.splitlines():
        key, *value = line.split(None, 1)  # postmap -s: key, tab, value
        pairs.append((key, value[0].strip() if value else ""))
    return pairs
