"""postscreen_dnsbl_sites syntax, reply filters, query names, client addresses, TXT hygiene."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone

import pytest

from smtpfilter.core.envelope import Client
from smtpfilter.core.message import MessageContext
from smtpfilter.core.wire import to_wire
from smtpfilter.engine.checks.dnsbl import (
    ReplyFilter,
    Site,
    client_address,
    normalise_domain,
    parse_sites,
    reverse_ip,
    sanitise_txt,
)

# The postscreen_dnsbl_sites of a real main.cf (shared/seeds/000_546001af23c42db1.txt), as it
# appears there: one entry per line. (The seed shows the continuation lines without their leading
# whitespace; in main.cf they must be indented, or Postfix reads each as a new parameter.)
SEED_SITES = """\
zen.spamhaus.org*2
bl.mailspike.net
b.barracudacentral.org*2
bl.spameatingmonkey.net
bl.spamcop.net
dnsbl.sorbs.net
psbl.surriel.com
list.dnswl.org=127.0.[0..255].0*-2
list.dnswl.org=127.0.[0..255].1*-3
list.dnswl.org=127.0.[0..255].[2..3]*-4
"""


def test_the_seed_main_cf_list_parses_into_its_sites_and_weights():
    sites = parse_sites([SEED_SITES])
    assert [(s.zone, s.filter.text if s.filter else None, s.weight) for s in sites] == [
        ("zen.spamhaus.org", None, 2),
        ("bl.mailspike.net", None, 1),
        ("b.barracudacentral.org", None, 2),
        ("bl.spameatingmonkey.net", None, 1),
        ("bl.spamcop.net", None, 1),
        ("dnsbl.sorbs.net", None, 1),
        ("psbl.surriel.com", None, 1),
        ("list.dnswl.org", "127.0.[0..255].0", -2),
        ("list.dnswl.org", "127.0.[0..255].1", -3),
        ("list.dnswl.org", "127.0.[0..255].[2..3]", -4),
    ]
    # The dnswl entries split by the last octet (dnswl's trust level): exactly one matches.
    dnswl = [s for s in sites if s.zone == "list.dnswl.org"]
    assert [s.weight for s in dnswl if s.matches(["127.0.15.2"])] == [-4]
    assert [s.weight for s in dnswl if s.matches(["127.0.9.1"])] == [-3]
    assert [s.weight for s in dnswl if s.matches(["127.0.9.0"])] == [-2]


def test_the_issue_example_on_one_line_with_commas():
    sites = parse_sites(
        ["zen.spamhaus.org=127.0.0.[2..11]*3, bl.spamcop.net*2, list.dnswl.org=127.0.[0..255].[2..3]*-4"]
    )
    assert [str(s) for s in sites] == [
        "zen.spamhaus.org=127.0.0.[2..11]*3",
        "bl.spamcop.net*2",
        "list.dnswl.org=127.0.[0..255].[2..3]*-4",
    ]


def test_a_yaml_list_of_entries_works_too():
    assert parse_sites(["zen.spamhaus.org*3", "bl.spamcop.net"]) == [
        Site("zen.spamhaus.org", None, 3),
        Site("bl.spamcop.net", None, 1),
    ]


@pytest.mark.parametrize(
    "pattern, address, matches",
    [
        ("127.0.0.2", "127.0.0.2", True),
        ("127.0.0.2", "127.0.0.3", False),
        ("127.0.0.[2..11]", "127.0.0.11", True),
        ("127.0.0.[2..11]", "127.0.0.12", False),
        ("127.0.0.[2;4;6..8]", "127.0.0.7", True),
        ("127.0.0.[2;4;6..8]", "127.0.0.5", False),
        ("127.0.[0..255].[2..3]", "127.0.200.3", True),
        ("[127.0.0.2]", "127.0.0.2", True),  # ip_match strips [] around the whole pattern
        ("127.0.0.[10]", "127.0.0.10", True),
    ],
)
def test_reply_filters_match_like_postfix_ip_match(pattern, address, matches):
    assert ReplyFilter.parse(pattern).matches(address) is matches


@pytest.mark.parametrize(
    "entry, complaint",
    [
        ("zen.spamhaus.org*two", "weight 'two' is not a whole number"),
        ("zen.spamhaus.org=127.0.0", "need four fields"),
        ("zen.spamhaus.org=127.0.0.256", "not a number 0..255"),
        ("zen.spamhaus.org=127.0.0.[5..2]", "runs backwards"),
        ("zen.spamhaus.org=127.0.0.3[6..9]", "mixes a number and []"),
        ("zen.spamhaus.org=127.0.0.[2,3]", "a comma separates sites"),
        ("zen spamhaus", "'zen' is not a DNS list domain"),
        ("bad..zone.org", "is not a DNS list domain"),
    ],
)
def test_bad_entries_are_named(entry, complaint):
    with pytest.raises(ValueError) as caught:
        parse_sites([entry])
    assert complaint in str(caught.value)


def test_query_names_reverse_octets_and_ipv6_nibbles():
    assert reverse_ip(ipaddress.ip_address("192.0.2.99")) == "99.2.0.192"
    # RFC 5782 §2.4's own example.
    assert reverse_ip(ipaddress.ip_address("2001:db8:1:2:3:4:567:89ab")) == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
    )


def _msg(client: Client, *headers: str) -> MessageContext:
    data = to_wire(("\n".join(headers) + "\n\nbody\n").encode()) if headers else b"\r\nbody\r\n"
    return MessageContext.build(data, received_at=datetime.now(timezone.utc), client=client)


@pytest.mark.parametrize(
    "addr, expected",
    [
        ("1.2.3.4", "1.2.3.4"),
        ("2a00:1450:4001:82a::200e", "2a00:1450:4001:82a::200e"),  # XFORWARD's "IPv6:" already stripped
        ("IPv6:2a00:1450:4001:82a::200e", "2a00:1450:4001:82a::200e"),
        ("::ffff:1.2.3.4", "1.2.3.4"),  # an IPv4 client seen through an IPv6 socket
        ("127.0.0.1", None),
        ("::1", None),
        ("10.1.2.3", None),
        ("192.168.1.1", None),
        ("172.16.0.1", None),
        ("169.254.1.1", None),
        ("100.64.0.1", None),  # carrier-grade NAT
        ("fd00::1", None),
        ("fe80::1", None),
        ("not-an-ip", None),
    ],
)
def test_only_public_client_addresses_are_looked_up(addr, expected):
    ip, why = client_address(_msg(Client(addr=addr)))
    assert (str(ip) if ip else None) == expected, why


def test_no_xforward_addr_means_no_lookup_unless_received_fallback_is_on():
    received = (
        "Received: from mail.example.net (mail.example.net [1.2.3.4])\n"
        "\tby mx.example.org (Postfix) with ESMTPS id 4F2B1; Mon, 1 Jan 2024 10:00:00 +0000"
    )
    msg = _msg(Client(), received, "Received: from evil (evil [5.6.7.8]) by x")
    assert client_address(msg)[0] is None
    assert str(client_address(msg, received_hop=1)[0]) == "1.2.3.4"
    assert str(client_address(msg, received_hop=2)[0]) == "5.6.7.8"
    assert client_address(msg, received_hop=3)[0] is None
    # XFORWARD wins whenever it is there.
    assert str(client_address(_msg(Client(addr="9.9.9.9"), received), received_hop=1)[0]) == "9.9.9.9"


def test_received_fallback_reads_ipv6_and_ignores_local_submission():
    v6 = "Received: from h (h [IPv6:2a00:1450:4001:82a::200e]) by mx (Postfix)"
    assert str(client_address(_msg(Client(), v6), received_hop=1)[0]) == "2a00:1450:4001:82a::200e"
    local = "Received: by mx.example.org (Postfix, from userid 1000) id 4F2B1; Mon, 1 Jan 2024"
    assert client_address(_msg(Client(), local), received_hop=1)[0] is None


def test_txt_is_sanitised_never_trusted():
    hostile = "Listed\r\n250 2.0.0 Ok\x00 see\thttp://x.test/\x1b[31m \u00e9t\u00e9 " + "A" * 600
    clean = sanitise_txt(hostile)
    assert all(" " <= c <= "~" for c in clean)
    assert clean.startswith("Listed 250 2.0.0 Ok see http://x.test/ [31m ?t? A")
    assert len(clean) == 255 and clean.endswith("...")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Example.COM.", "example.com"),
        ("b\u00fccher.example", "xn--bcher-kva.example"),
        ("[1.2.3.4]", None),
        ("1.2.3.4", None),
        ("localhost", None),
        ("", None),
        ("bad_label-.example", None),
        (None, None),
    ],
)
def test_domains_for_rhsbl(raw, expected):
    assert normalise_domain(raw) == expected
