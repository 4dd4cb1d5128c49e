"""The pod-template annotations `remora inject` reads, named like Istio's with remora.io.

sidecar.istio.io/inject -> sidecar.remora.io/inject, traffic.sidecar.istio.io/* ->
traffic.sidecar.remora.io/*. Values are checked here, once, so a typo in a CIDR or a port
list fails the injection with the annotation's name instead of failing later inside the
pod's init container.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

INJECT = "sidecar.remora.io/inject"             # annotation or label: "false" opts the pod out
STATUS = "sidecar.remora.io/status"             # written by inject: what was added
APP_PORT = "sidecar.remora.io/appPort"          # the port the inbound listener forwards to
TOKEN_SECRET = "sidecar.remora.io/tokenSecret"  # Secret holding the join token (key `token`)

TRAFFIC = "traffic.sidecar.remora.io/"
INCLUDE_OUTBOUND_CIDRS = TRAFFIC + "includeOutboundIPRanges"
EXCLUDE_OUTBOUND_CIDRS = TRAFFIC + "excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = TRAFFIC + "includeInboundPorts"
EXCLUDE_INBOUND_PORTS = TRAFFIC + "excludeInboundPorts"
EXCLUDE_OUTBOUND_PORTS = TRAFFIC + "excludeOutboundPorts"
KNOWN_TRAFFIC = (INCLUDE_OUTBOUND_CIDRS, EXCLUDE_OUTBOUND_CIDRS, INCLUDE_INBOUND_PORTS,
                 EXCLUDE_INBOUND_PORTS, EXCLUDE_OUTBOUND_PORTS)

# Istio's spellings of a boolean annotation.
_TRUE = {"true", "yes", "y", "on", "enabled"}
_FALSE = {"false", "no", "n", "off", "disabled"}


class AnnotationError(ValueError):
    """An annotation whose value cannot be used; the message names the annotation."""


@dataclass(frozen=True)
class TrafficCapture:
    """What `remora iptables` captures: the values of its include/exclude flags ("" = none)."""

    include_outbound_cidrs: str = "*"
    exclude_outbound_cidrs: str = ""
    include_inbound_ports: str = "*"
    exclude_inbound_ports: str = ""
    exclude_outbound_ports: str = ""


def wants_injection(annotations: dict, labels: dict) -> bool:
    """False when the label or the annotation sidecar.remora.io/inject says so (label first, like Istio)."""
    for where, values in (("label", labels), ("annotation", annotations)):
        value = values.get(INJECT)
        if value is None:
            continue
        text = str(value).strip().lower()
        if text in _FALSE:
            return False
        if text not in _TRUE:
            raise AnnotationError(f"{where} {INJECT}: expected true or false, got {value!r}")
    return True


def app_port(annotations: dict) -> int | None:
    """sidecar.remora.io/appPort as a port number, or None when not set."""
    value = annotations.get(APP_PORT)
    if value is None:
        return None
    return _port(APP_PORT, str(value).strip())


def traffic_capture(annotations: dict, has_inbound: bool) -> TrafficCapture:
    """The traffic.sidecar.remora.io/* annotations, checked; defaults like Istio's.

    Without an inbound listener (no app port) nothing inbound is captured by default,
    since the sidecar would have nowhere to send it.
    """
    for key in annotations:
        if str(key).startswith(TRAFFIC) and key not in KNOWN_TRAFFIC:
            raise AnnotationError(f"annotation {key}: unknown; known: "
                                  + ", ".join(k.removeprefix(TRAFFIC) for k in KNOWN_TRAFFIC))
    include_inbound = _ports(annotations, INCLUDE_INBOUND_PORTS, wildcard=True)
    if include_inbound is None:
        include_inbound = "*" if has_inbound else ""
    elif include_inbound and not has_inbound:
        raise AnnotationError(f"annotation {INCLUDE_INBOUND_PORTS}: inbound capture needs an app port "
                              f"(a containerPort on the first container, or annotation {APP_PORT})")
    include_outbound = _cidrs(annotations, INCLUDE_OUTBOUND_CIDRS, wildcard=True)
    return TrafficCapture(
        include_outbound_cidrs="*" if include_outbound is None else include_outbound,
        exclude_outbound_cidrs=_cidrs(annotations, EXCLUDE_OUTBOUND_CIDRS, wildcard=False) or "",
        include_inbound_ports=include_inbound,
        exclude_inbound_ports=_ports(annotations, EXCLUDE_INBOUND_PORTS, wildcard=False) or "",
        exclude_outbound_ports=_ports(annotations, EXCLUDE_OUTBOUND_PORTS, wildcard=False) or "",
    )


def _items(annotations: dict, key: str, wildcard: bool) -> list[str] | None:
    value = annotations.get(key)
    if value is None:
        return None
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if "*" in items and (not wildcard or len(items) > 1):
        raise AnnotationError(f"annotation {key}: '*' " + ("must be alone" if wildcard else "is not allowed here"))
    return items


def _cidrs(annotations: dict, key: str, wildcard: bool) -> str | None:
    items = _items(annotations, key, wildcard)
    if items is None:
        return None
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise AnnotationError(f"annotation {key}: {item!r} is not an IP range (CIDR like 10.0.0.0/8)") from None
    return ",".join(items)


def _ports(annotations: dict, key: str, wildcard: bool) -> str | None:
    items = _items(annotations, key, wildcard)
    if items is None:
        return None
    for item in items:
        if item != "*":
            _port(key, item)
    return ",".join(items)


def _port(key: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise AnnotationError(f"annotation {key}: {text!r} is not a port number (1-65535)")
    return int(text)
