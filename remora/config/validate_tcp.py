"""Istio's rules for a VirtualService's `tcp` routes (pkg/config/validation validateTCPRoute,
validateTCPMatch), returned as Problems for validate.py."""
from __future__ import annotations

import ipaddress

from remora.config.model import TCPRoute
from remora.config.schema import Problem


def tcp_route_problems(path: str, route: TCPRoute, host_problem) -> list[Problem]:
    """Problems of one tcp route at `path`; `host_problem(host)` judges destination hosts."""
    problems: list[Problem] = []
    if not route.route:
        problems.append(Problem(f"{path}.route", "TCP route is required"))
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
