"""The envelope of one message (sender, recipients, their SMTP parameters) and the client that
sent it to Postfix, with the one mapping between XFORWARD attributes and :class:`Client`.

Every front door fills these (the SMTP transaction, pipe(8)'s arguments, later the milter's
macros); the engine, the quarantine and delivery to 10026 read them and know no front door.
Part of ``core``, the shared vocabulary (imports nothing else of smtpfilter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "XFORWARD_GROUPS",
    "XFORWARD_NAMES",
    "Client",
    "Envelope",
    "Recipient",
    "without_ipv6_prefix",
]

# XFORWARD_README: the attributes, in the order Postfix sends them: NAME/ADDR/PORT in a first
# command, PROTO/HELO/IDENT/SOURCE in a second.
XFORWARD_GROUPS = (("NAME", "ADDR", "PORT"), ("PROTO", "HELO", "IDENT", "SOURCE"))
XFORWARD_NAMES = tuple(name for group in XFORWARD_GROUPS for name in group)
# XFORWARD_README: the value Postfix sends for an attribute it does not know.
_UNKNOWN = (None, "", "[UNAVAILABLE]", "[TEMPUNAVAIL]")


def without_ipv6_prefix(address: str) -> str:
    """An address as XFORWARD and Postfix's Received: lines write it ("IPv6:2001:db8::1", any
    case) without the prefix, as the rules and ipaddress read it."""
    return address[5:] if address[:5].lower() == "ipv6:" else address


@dataclass(frozen=True, slots=True)
class Client:
    """The client that connected to Postfix, as XFORWARD told us (XFORWARD_README).

    ``None`` where Postfix said ``[UNAVAILABLE]`` or sent nothing (local submission via pickup).
    """

    addr: str | None = None  # IPv4 dotted quad or IPv6 without the "IPv6:" prefix
    name: str | None = None
    helo: str | None = None
    proto: str | None = None
    ident: str | None = None  # the upstream Postfix queue id
    source: str | None = None  # LOCAL or REMOTE
    port: str | None = None
    # The SASL login of the client (AUTH), where a front door knows it: the milter's
    # {auth_authen} macro, the policy service's sasl_username. XFORWARD does not carry it.
    sasl_user: str | None = None

    def describe(self) -> str:
        if self.addr is None:
            return "local" if self.name is None else f"{self.name}"
        return f"{self.name or 'unknown'}[{self.addr}]"

    @classmethod
    def from_xforward(cls, attrs: dict[str, str]) -> "Client":
        """XFORWARD attributes (decoded values, ``[UNAVAILABLE]`` kept as sent) → Client."""

        def known(name: str) -> str | None:
            value = attrs.get(name)
            return None if value in _UNKNOWN else value

        addr = known("ADDR")
        return cls(
            addr=None if addr is None else without_ipv6_prefix(addr),
            name=known("NAME"),
            helo=known("HELO"),
            proto=known("PROTO"),
            ident=known("IDENT"),
            source=known("SOURCE"),
            port=known("PORT"),
        )

    def xforward(self) -> dict[str, str]:
        """The XFORWARD attributes that describe this client (unknown ones left out, as Postfix
        does), in XFORWARD_NAMES order; an IPv6 ADDR gets its "IPv6:" prefix back."""
        values = {
            "NAME": self.name,
            "ADDR": f"IPv6:{self.addr}" if self.addr and ":" in self.addr else self.addr,
            "PORT": self.port,
            "PROTO": self.proto,
            "HELO": self.helo,
            "IDENT": self.ident,
            "SOURCE": self.source,
        }
        return {name: value for name, value in values.items() if value}


@dataclass(slots=True)
class Recipient:
    address: str
    path: str  # inside the angle brackets, as received
    params: list[str] = field(default_factory=list)  # "NOTIFY=...", "ORCPT=..." as received


@dataclass(slots=True)
class Envelope:
    """What Postfix handed over with the message, kept as received so that it reaches 10026
    (now, or at a quarantine release) unchanged."""

    mail_from: str = ""  # the address (a source route removed)
    mail_path: str = ""  # inside the angle brackets, as received
    mail_params: dict[str, str] = field(default_factory=dict)  # KEYWORD → token as received
    recipients: list[Recipient] = field(default_factory=list)
    xforward: dict[str, str] = field(default_factory=dict)  # decoded; "[UNAVAILABLE]" kept

    @property
    def rcpt_to(self) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients)

    def client(self) -> Client:
        return Client.from_xforward(self.xforward)
