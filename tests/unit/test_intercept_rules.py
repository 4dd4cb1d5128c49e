"""Rule generation of `remora iptables` (remora/intercept/rules.py): pure, no iptables needed."""
from __future__ import annotations

import pytest

from remora.intercept.rules import (
    IPV4, IPV6, CaptureError, clean_commands, nat_rules, parse_capture, restore_text)


def rules(family: int = IPV4, **flags) -> list[str]:
    return nat_rules(parse_capture(**flags), family)


def test_defaults_follow_istio_order():
    """Defaults capture all outbound and inbound TCP, in Istio's rule order (REDIRECT mode)."""
    assert rules() == [
        ":REMORA_INBOUND - [0:0]", ":REMORA_REDIRECT - [0:0]",
        ":REMORA_IN_REDIRECT - [0:0]", ":REMORA_OUTPUT - [0:0]",
        "-A REMORA_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A REMORA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A PREROUTING -p tcp -j REMORA_INBOUND",
        "-A REMORA_INBOUND -p tcp --dport 15000 -j RETURN",
        "-A REMORA_INBOUND -p tcp --dport 15001 -j RETURN",
        "-A REMORA_INBOUND -p tcp --dport 15006 -j RETURN",
        "-A REMORA_INBOUND -p tcp --dport 15021 -j RETURN",
        "-A REMORA_INBOUND -p tcp --dport 15090 -j RETURN",
        "-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT",
        "-A OUTPUT -p tcp -j REMORA_OUTPUT",
        "-A REMORA_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j REMORA_IN_REDIRECT",
        "-A REMORA_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A REMORA_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A REMORA_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j REMORA_IN_REDIRECT",
        "-A REMORA_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
        "-A REMORA_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A REMORA_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A REMORA_OUTPUT -j REMORA_REDIRECT",
    ]


def test_ipv6_uses_ipv6_loopback():
    """IPv6 rules name ::1/128 where IPv4 names 127.0.0.1/32, and nothing of IPv4."""
    text = "\n".join(rules(IPV6))
    assert "::1/128" in text and "127.0.0.1" not in text


def test_capture_ports_and_ids_are_used():
    """Custom capture ports, uid and gid appear in the redirects and owner matches."""
    text = "\n".join(rules(outbound_capture_port="16001", inbound_capture_port="16006",
                           proxy_uid="999", proxy_gid="998"))
    assert "REDIRECT --to-ports 16001" in text and "REDIRECT --to-ports 16006" in text
    assert "--uid-owner 999" in text and "--gid-owner 998" in text and "1337" not in text
    # the custom capture ports are never captured inbound either
    assert "--dport 16001 -j RETURN" in text and "--dport 16006 -j RETURN" in text


def test_outbound_cidrs_split_by_family_and_exclude_first():
    """Excluded CIDRs RETURN before included ones redirect; each family gets only its CIDRs."""
    flags = dict(include_outbound_cidrs="10.96.0.0/12,fd00:10::/64", exclude_outbound_cidrs="10.96.0.1/32,fd00:10::1/128")
    v4, v6 = rules(IPV4, **flags), rules(IPV6, **flags)
    assert v4[-2:] == ["-A REMORA_OUTPUT -d 10.96.0.1/32 -j RETURN", "-A REMORA_OUTPUT -d 10.96.0.0/12 -j REMORA_REDIRECT"]
    assert v6[-2:] == ["-A REMORA_OUTPUT -d fd00:10::1/128 -j RETURN", "-A REMORA_OUTPUT -d fd00:10::/64 -j REMORA_REDIRECT"]
    assert "-A REMORA_OUTPUT -j REMORA_REDIRECT" not in v4


def test_empty_include_outbound_captures_nothing_outbound():
    """--include-outbound-cidrs '' redirects no outbound traffic (the chain only returns)."""
    assert not any(line.endswith("-j REMORA_REDIRECT") for line in rules(include_outbound_cidrs=""))


def test_exclude_outbound_ports_come_first():
    """Excluded outbound ports RETURN before any other outbound rule, so they win over everything."""
    out = [line for line in rules(exclude_outbound_ports="3306,5432") if "REMORA_OUTPUT " in line and line.startswith("-A REMORA_OUTPUT")]
    assert out[:2] == ["-A REMORA_OUTPUT -p tcp --dport 3306 -j RETURN", "-A REMORA_OUTPUT -p tcp --dport 5432 -j RETURN"]


def test_inbound_include_list_redirects_only_those_ports_minus_excluded_and_own():
    """A port list captures exactly those ports, never an excluded one or the sidecar's own."""
    inbound = [line for line in rules(include_inbound_ports="9080,9090,15021", exclude_inbound_ports="9090")
               if line.startswith("-A REMORA_INBOUND")]
    assert inbound == ["-A REMORA_INBOUND -p tcp --dport 9080 -j REMORA_IN_REDIRECT"]


def test_inbound_wildcard_returns_excluded_ports():
    """With '*', excluded ports RETURN before the catch-all redirect."""
    inbound = [line for line in rules(exclude_inbound_ports="22") if line.startswith("-A REMORA_INBOUND")]
    assert inbound[0] == "-A REMORA_INBOUND -p tcp --dport 22 -j RETURN"
    assert inbound[-1] == "-A REMORA_INBOUND -p tcp -j REMORA_IN_REDIRECT"


def test_no_inbound_capture_means_no_prerouting_jump_and_no_self_redirect():
    """--include-inbound-ports '' adds no PREROUTING jump and never sends the proxy's calls inbound."""
    text = "\n".join(rules(include_inbound_ports=""))
    assert "PREROUTING" not in text
    assert "-j REMORA_IN_REDIRECT" not in text


def test_restore_text_is_one_nat_transaction():
    """The iptables-restore input is one *nat table block ending in COMMIT."""
    text = restore_text(parse_capture(), IPV4)
    assert text.startswith("*nat\n:REMORA_INBOUND - [0:0]\n") and text.endswith("\nCOMMIT\n")


@pytest.mark.parametrize("flags, message", [
    ({"include_outbound_cidrs": "10.0.0.0/33"}, "--include-outbound-cidrs: '10.0.0.0/33' is not an IP range"),
    ({"exclude_outbound_cidrs": "*"}, "--exclude-outbound-cidrs: '*' is not allowed here"),
    ({"include_inbound_ports": "*,80"}, "--include-inbound-ports: '*' must be alone"),
    ({"exclude_inbound_ports": "http"}, "--exclude-inbound-ports: 'http' is not a port number"),
    ({"exclude_outbound_ports": "70000"}, "--exclude-outbound-ports: '70000' is not a port number"),
    ({"outbound_capture_port": "0"}, "--outbound-capture-port: '0' is not a port number"),
    ({"proxy_uid": "istio"}, "--proxy-uid: 'istio' is not a numeric id"),
])
def test_bad_flags_name_the_flag(flags, message):
    """A bad value fails with the flag's name and the offending value."""
    with pytest.raises(CaptureError, match=message.replace("*", r"\*").replace("(", r"\(")):
        parse_capture(**flags)


SAVED = """# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j REMORA_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:REMORA_INBOUND - [0:0]
:REMORA_OUTPUT - [0:0]
:USER_CHAIN - [0:0]
-A PREROUTING -p tcp -j REMORA_INBOUND
-A OUTPUT -d 10.1.0.0/16 -j USER_CHAIN
-A OUTPUT -p tcp -j REMORA_OUTPUT
-A REMORA_OUTPUT -j RETURN
COMMIT
"""


def test_clean_removes_only_jumps_into_remora_chains_then_the_chains():
    """--clean deletes the nat jumps into REMORA_* chains, then flushes and deletes those chains; user rules stay."""
    assert clean_commands(SAVED) == [
        ["-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "REMORA_INBOUND"],
        ["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "REMORA_OUTPUT"],
        ["-t", "nat", "-F", "REMORA_INBOUND"], ["-t", "nat", "-F", "REMORA_OUTPUT"],
        ["-t", "nat", "-X", "REMORA_INBOUND"], ["-t", "nat", "-X", "REMORA_OUTPUT"],
    ]


def test_clean_of_a_clean_table_does_nothing():
    """Nothing of ours installed: --clean has nothing to run (so it is idempotent)."""
    assert clean_commands("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n") == []
