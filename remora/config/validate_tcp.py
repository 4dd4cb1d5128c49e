"""Istio's rules for a VirtualService's `tcp` and `tls` routes (pkg/config/validation
validateTCPRoute, validateTCPMatch, validateTLSRoute, validateTLSMatch), returned as
Problems for validate.py; and Remora's limit: `tls` routes are served at gateways only."""
from __future__ import annotations

import ipaddress

from remora.config.gateways import applies_to_sidecars
from remora.config.model import TCPRoute, TLSRoute, VirtualServiceSpec
from remora.config.schema import Problem


def tls_route_problems(path: str, route: TLSRoute, spec: VirtualServiceSpec, host_problem) -> list[Problem]:
    """Problems of one tls route: Istio's, and Remora's fail-closed limit (gateways only)."""
    problems: list[Problem] = []
    if not route.match:
        problems.append(Problem(f"{path}.match", "TLS route must have at least one match condition"))
    for j, match in enumerate(route.match):
        if not match.sni_hosts:
            problems.append(Problem(f"{path}.match[{j}].sniHosts", "TLS match must have at least one SNI host"))
        sidecars = applies_to_sidecars(match.gateways or spec.gateways)
        if sidecars:
            problems.append(Problem(f"{path}.match[{j}]", "tls routes at sidecars (gateways `mesh`) are not supported "
                                    "by Remora: bind the VirtualService to a Gateway with a PASSTHROUGH server"))
    return problems + _l4_problems(path, route, host_problem, "TLS")


def tcp_route_problems(path: str, route: TCPRoute, host_problem) -> list[Problem]:
    """Problems of one tcp route at `path`; `host_problem(host)` judges destination hosts."""
    return _l4_problems(path, route, host_problem, "TCP")


def _l4_problems(path: str, route, host_problem, kind: str) -> list[Problem]:
    problems: list[Problem] = []
    if not route.route:
        problems.append(Problem(f"{path}.route", f"{kind} route is required"))
    for j, match in enumerate(route.match):
        where = f"{path}.match[{j}]"
        for k, subnet in enumerate(match.destination_subnets):
            try:
                ipaddress.ip_network(subnet, strict=False)
            except ValueError:
                problems.append(Problem(f"{where}.destinationSubnets[{k}]", f"{subnet!r} is not a valid IP or CIDR"))
        if match.port is not None and not 1 <= match.port <= 65535:
            problems.append(Problem(f"{where}.port", f"port number {match.port} must be in the range 1..65535"))
    weights = []
    for k, destination in enumerate(route.route):
        where = f"{path}.route[{k}]"
        message = host_problem(destination.destination.host)
        if message:
            problems.append(Problem(f"{where}.destination.host", message))
        port = destination.destination.port
        if port is not None and port.number is not None and not 1 <= port.number <= 65535:
            problems.append(Problem(f"{where}.destination.port.number",
                                    f"port number {port.number} must be in the range 1..65535"))
        if (destination.weight or 0) < 0:
            problems.append(Problem(f"{where}.weight", f"weight must be >= 0, got {destination.weight}"))
        weights.append(destination.weight or 0)
    if len(weights) > 1 and not any(weights):
        problems.append(Problem(f"{path}.route", "weights of several destinations are all zero (a missing "
                                "weight counts as 0)"))
    return problems
