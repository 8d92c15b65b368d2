"""Serve the openspf test suite's ``zonedata`` (rfc7208-tests.yml) from the test DNS server.

The suite's driver conventions (pyspf test/testspf.py): ``SPF:`` records are also served as TXT
unless the name has TXT records of its own (we only ever ask for TXT: RFC 7208 §3.1 dropped type
SPF); ``TXT: NONE`` means no TXT record; a bare ``TIMEOUT`` entry makes every query for a type
the name has no data of time out (served as SERVFAIL: same temperror, without waiting); a
``TIMEOUT`` value times out that type only. Everything is served from one root zone so names
the data does not mention are NXDOMAIN, as in the suite's driver.
"""

from __future__ import annotations

import dns.name

from tests.support.dnsserver import DnsServer, Fault

_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "CNAME")
_ROOT_HEAD = (
    "@ 300 IN SOA ns.root.test. hostmaster.root.test. 1 3600 600 86400 300\n"
    "@ 300 IN NS ns.root.test.\n"
)


def _quote(text: str) -> str:
    """A master-file quoted string; anything but printable ASCII as \\DDD of its UTF-8 bytes."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\' or not " " <= char <= "~":
            out.append(f"\\{byte:03d}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def serve_zonedata(server: DnsServer, zonedata: dict) -> None:
    lines = []
    for name, records in zonedata.items():
        try:
            owner = dns.name.from_text(name)
        except Exception:
            continue  # a name DNS cannot carry (label > 63): it simply does not exist
        absolute = owner.to_text()
        entries = [r for r in records if isinstance(r, dict)]
        has_txt = any("TXT" in r for r in entries)
        present: set[str] = set()
        for entry in entries:
            [(rdtype, value)] = entry.items()
            if rdtype == "SPF":
                if has_txt:
                    continue
                rdtype = "TXT"
            if value == "TIMEOUT":
                server.fault(absolute, Fault.SERVFAIL, rdtype=rdtype)
                present.add(rdtype)
                continue
            if rdtype == "TXT":
                strings = value if isinstance(value, list) else [value]
                if strings == ["NONE"]:
                    continue
                rdata = " ".join(_quote(str(s)) for s in strings) or '""'
            elif rdtype == "MX":
                preference, host = value
                rdata = f"{preference} {host.rstrip('.')}." if host else f"{preference} ."
            elif rdtype in ("PTR", "CNAME"):
                rdata = value if value.endswith(".") else value + "."
            else:
                rdata = str(value)
            present.add(rdtype)
            lines.append(f"{absolute} IN {rdtype} {rdata}")
        if "TIMEOUT" in records:
            for rdtype in _TYPES:
                if rdtype not in present:
                    server.fault(absolute, Fault.SERVFAIL, rdtype=rdtype)
    server.add_zone(".", _ROOT_HEAD + "\n".join(lines) + "\n")
