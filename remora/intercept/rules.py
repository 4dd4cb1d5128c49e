"""The nat rules of `remora iptables`: a pure function from the capture flags to rules.

Chains and order follow Istio's istio-iptables (REDIRECT mode), renamed REMORA_*:

    PREROUTING -p tcp -> REMORA_INBOUND      inbound: excluded ports RETURN, then the
                                             captured ports (or all) -> REMORA_IN_REDIRECT
    OUTPUT     -p tcp -> REMORA_OUTPUT       outbound, first match wins:
      excluded destination ports             RETURN
      proxy uid/gid over lo, not to 127.0.0.1/::1
                                             -> REMORA_IN_REDIRECT (the sidecar calling its
                                                own pod IP, e.g. a service VIP that resolved
                                                to this pod, goes through the inbound side
                                                and its policy, as in Istio)
      any other uid/gid over lo              RETURN (app -> itself stays direct: loopback
                                                and its own pod IP alike)
      proxy uid/gid                          RETURN (the sidecar's own calls: never captured)
      to 127.0.0.1/::1                       RETURN
      excluded CIDRs                         RETURN
      included CIDRs (or all)                -> REMORA_REDIRECT
    REMORA_REDIRECT    -> REDIRECT --to-ports <outbound capture port>  (15001)
    REMORA_IN_REDIRECT -> REDIRECT --to-ports <inbound capture port>   (15006)

The sidecar's own ports (admin 15000, 15001, 15006, health 15021, Prometheus 15090) are
never captured inbound: kubelet probes and scrapes reach them directly.

The rules are rendered in iptables-restore syntax for one table (`*nat` ... `COMMIT`),
applied with `iptables-restore --noflush` so one family's rules go in atomically. Removal
(`clean_commands`) is computed from `iptables-save` output: exactly the jumps into REMORA_*
chains and those chains, nothing else.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

CHAIN_INBOUND = "REMORA_INBOUND"
CHAIN_IN_REDIRECT = "REMORA_IN_REDIRECT"
CHAIN_OUTPUT = "REMORA_OUTPUT"
CHAIN_REDIRECT = "REMORA_REDIRECT"
CHAINS = (CHAIN_INBOUND, CHAIN_REDIRECT, CHAIN_IN_REDIRECT, CHAIN_OUTPUT)
CHAIN_PREFIX = "REMORA_"

PROXY_PORTS = (15000, 15001, 15006, 15021, 15090)   # the sidecar's own listeners
WILDCARD = "*"
IPV4, IPV6 = 4, 6
LOOPBACK = {IPV4: "127.0.0.1/32", IPV6: "::1/128"}


class CaptureError(ValueError):
    """A capture flag whose value cannot be used; the message names the flag."""


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture: the flags of `remora iptables`, parsed (see docs/kubernetes.md)."""

    outbound_capture_port: int = 15001
    inbound_capture_port: int = 15006
    proxy_uid: int = 1337
    proxy_gid: int = 1337
    include_outbound_cidrs: tuple[str, ...] = (WILDCARD,)   # (WILDCARD,) = all; () = none
    exclude_outbound_cidrs: tuple[str, ...] = ()
    include_inbound_ports: tuple[str, ...] = (WILDCARD,)    # (WILDCARD,) = all; () = none
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()


def parse_capture(*, outbound_capture_port: str = "15001", inbound_capture_port: str = "15006",
                  proxy_uid: str = "1337", proxy_gid: str = "1337",
                  include_outbound_cidrs: str = "*", exclude_outbound_cidrs: str = "",
                  include_inbound_ports: str = "*", exclude_inbound_ports: str = "",
                  exclude_outbound_ports: str = "") -> CaptureSpec:
    """The flag values as given on the command line -> CaptureSpec; CaptureError names the flag."""
    return CaptureSpec(
        outbound_capture_port=_port("--outbound-capture-port", outbound_capture_port),
        inbound_capture_port=_port("--inbound-capture-port", inbound_capture_port),
        proxy_uid=_id("--proxy-uid", proxy_uid),
        proxy_gid=_id("--proxy-gid", proxy_gid),
        include_outbound_cidrs=_cidrs("--include-outbound-cidrs", include_outbound_cidrs, True),
        exclude_outbound_cidrs=_cidrs("--exclude-outbound-cidrs", exclude_outbound_cidrs, False),
        include_inbound_ports=tuple(str(p) if p != WILDCARD else p for p in _ports(
            "--include-inbound-ports", include_inbound_ports, True)),
        exclude_inbound_ports=tuple(_ports("--exclude-inbound-ports", exclude_inbound_ports, False)),
        exclude_outbound_ports=tuple(_ports("--exclude-outbound-ports", exclude_outbound_ports, False)),
    )


def _port(flag: str, text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise CaptureError(f"{flag}: {text!r} is not a port number (1-65535)")
    return int(text)


def _id(flag: str, text: str) -> int:
    if not text.strip().isdigit():
        raise CaptureError(f"{flag}: {text!r} is not a numeric id")
    return int(text)


def _items(flag: str, text: str, wildcard: bool) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if WILDCARD in items and (not wildcard or len(items) > 1):
        raise CaptureError(f"{flag}: '*' " + ("must be alone" if wildcard else "is not allowed here"))
    return items


def _cidrs(flag: str, text: str, wildcard: bool) -> tuple[str, ...]:
    found = []
    for item in _items(flag, text, wildcard):
        if item == WILDCARD:
            return (WILDCARD,)
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise CaptureError(f"{flag}: {item!r} is not an IP range (CIDR like 10.0.0.0/8)") from None
    return tuple(found)


def _ports(flag: str, text: str, wildcard: bool) -> list:
    items = _items(flag, text, wildcard)
    if items == [WILDCARD]:
        return [WILDCARD]
    return [_port(flag, item) for item in items]


def _of_family(cidrs: tuple[str, ...], family: int) -> list[str]:
    return [c for c in cidrs if c != WILDCARD and ipaddress.ip_network(c).version == family]


def nat_rules(spec: CaptureSpec, family: int) -> list[str]:
    """The rule lines (iptables-restore syntax, without `*nat`/COMMIT) for one IP family."""
    lines = [f":{chain} - [0:0]" for chain in CHAINS]
    lines.append(f"-A {CHAIN_REDIRECT} -p tcp -j REDIRECT --to-ports {spec.outbound_capture_port}")
    lines.append(f"-A {CHAIN_IN_REDIRECT} -p tcp -j REDIRECT --to-ports {spec.inbound_capture_port}")
    lines += _inbound(spec)
    lines += _outbound(spec, family)
    return lines


def _inbound(spec: CaptureSpec) -> list[str]:
    include = spec.include_inbound_ports
    if not include:
        return []
    lines = [f"-A PREROUTING -p tcp -j {CHAIN_INBOUND}"]
    if include == (WILDCARD,):
        never = sorted(set(PROXY_PORTS) | {spec.outbound_capture_port, spec.inbound_capture_port}
                       | set(spec.exclude_inbound_ports))
        lines += [f"-A {CHAIN_INBOUND} -p tcp --dport {port} -j RETURN" for port in never]
        lines.append(f"-A {CHAIN_INBOUND} -p tcp -j {CHAIN_IN_REDIRECT}")
        return lines
    never = set(PROXY_PORTS) | set(spec.exclude_inbound_ports)
    lines += [f"-A {CHAIN_INBOUND} -p tcp --dport {port} -j {CHAIN_IN_REDIRECT}"
              for port in include if int(port) not in never]
    return lines


def _outbound(spec: CaptureSpec, family: int) -> list[str]:
    loopback = LOOPBACK[family]
    lines = [f"-A OUTPUT -p tcp -j {CHAIN_OUTPUT}"]
    lines += [f"-A {CHAIN_OUTPUT} -p tcp --dport {port} -j RETURN" for port in spec.exclude_outbound_ports]
    redirect_self = bool(spec.include_inbound_ports)   # nowhere to send it without inbound capture
    for match in (f"--uid-owner {spec.proxy_uid}", f"--gid-owner {spec.proxy_gid}"):
        if redirect_self:
            lines.append(f"-A {CHAIN_OUTPUT} ! -d {loopback} -o lo -p tcp -m owner {match} -j {CHAIN_IN_REDIRECT}")
        lines.append(f"-A {CHAIN_OUTPUT} -o lo -m owner ! {match} -j RETURN")
        lines.append(f"-A {CHAIN_OUTPUT} -m owner {match} -j RETURN")
    lines.append(f"-A {CHAIN_OUTPUT} -d {loopback} -j RETURN")
    lines += [f"-A {CHAIN_OUTPUT} -d {cidr} -j RETURN" for cidr in _of_family(spec.exclude_outbound_cidrs, family)]
    if spec.include_outbound_cidrs == (WILDCARD,):
        lines.append(f"-A {CHAIN_OUTPUT} -j {CHAIN_REDIRECT}")
    else:
        lines += [f"-A {CHAIN_OUTPUT} -d {cidr} -j {CHAIN_REDIRECT}"
                  for cidr in _of_family(spec.include_outbound_cidrs, family)]
    return lines


def restore_text(spec: CaptureSpec, family: int) -> str:
    """Input for `iptables-restore --noflush` (IPv4) or `ip6tables-restore --noflush` (IPv6)."""
    return "*nat\n" + "\n".join(nat_rules(spec, family)) + "\nCOMMIT\n"


def clean_commands(saved: str) -> list[list[str]]:
    """From `iptables-save -t nat` output: the arguments (after the binary) that remove
    every jump into a REMORA_* chain and then those chains; [] when none is there."""
    commands: list[list[str]] = []
    chains: list[str] = []
    table = None
    for line in saved.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            continue
        if table != "nat":
            continue
        if line.startswith(":" + CHAIN_PREFIX):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A ") and not line.split()[1].startswith(CHAIN_PREFIX):
            words = line.split()
            if "-j" in words and words[words.index("-j") + 1].startswith(CHAIN_PREFIX):
                commands.append(["-t", "nat", "-D", *words[1:]])
    for chain in chains:
        commands.append(["-t", "nat", "-F", chain])
    for chain in chains:
        commands.append(["-t", "nat", "-X", chain])
    return commands
