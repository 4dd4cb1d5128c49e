"""Semantic rules of ServiceEntry and WorkloadEntry, held to Istio's own validation
(pkg/config/validation/validation.go ValidateServiceEntry, validateWorkloadEntry,
ValidateUnixAddress, and the CRD rules its testdata/crds fixtures check):

- a ServiceEntry host is never `*`; CIDR addresses only with resolution NONE or STATIC;
  DNS_ROUND_ROBIN takes at most one endpoint (Envoy's LOGICAL_DNS resolves one name);
- only one of workloadSelector and endpoints; no endpoints for resolution NONE;
- a selector value or key is never a wildcard (`*`): Istio's "wildcard is not supported in
  selector";
- a unix address (`unix://PATH`) is an absolute path to a file (not ending in `/`) or an
  abstract socket `@name`, and carries no ports;
- port names are DNS-1123 labels; ports 1..65535.
"""
from __future__ import annotations

import ipaddress
import re

from remora.config.model import ServiceEntrySpec, WorkloadEntrySpec
from remora.config.schema import Problem, join_path
from remora.config.field_checks import FieldChecks, is_hostname, is_ip

SERVICE_ENTRY_RESOLUTIONS = frozenset({"NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN"})
SERVICE_ENTRY_LOCATIONS = frozenset({"MESH_EXTERNAL", "MESH_INTERNAL"})
UNIX_PREFIX = "unix://"
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def validate_service_entry(spec: ServiceEntrySpec, path: str = "spec") -> list[Problem]:
    checks = FieldChecks()
    if not spec.hosts:
        checks.add(f"{path}.hosts", "a ServiceEntry needs at least one host")
    for i, host in enumerate(spec.hosts):
        where = f"{path}.hosts[{i}]"
        if host == "*":
            checks.add(where, "a ServiceEntry host cannot be `*`")
        elif host.startswith("*") and not host.startswith("*."):
            # Istio accepts it with a warning ("partial wildcard"); Remora matches `*.suffix` only.
            checks.add(where, f"partial wildcard host {host!r} is not supported by Remora: write `*.{host[1:]}`"
                              " or the names themselves")
        else:
            checks.host(where, host)
    for i, address in enumerate(spec.addresses):
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            checks.add(f"{path}.addresses[{i}]", f"invalid address {address!r}: expected an IP or CIDR")
        # Istio's test is the slash, so 10.0.0.1/32 counts as a CIDR too.
        if "/" in address and (spec.resolution or "NONE") not in ("NONE", "STATIC"):
            checks.add(f"{path}.addresses[{i}]", f"CIDR address {address!r} is allowed only with resolution "
                                                 f"NONE or STATIC, not {spec.resolution}")
    if spec.workload_selector is not None:
        _selector_labels(checks, f"{path}.workloadSelector.labels", spec.workload_selector.labels)
    port_names: set[str] = set()
    port_numbers: set[int] = set()
    for i, port in enumerate(spec.ports):
        where = f"{path}.ports[{i}]"
        checks.port(f"{where}.number", port.number)
        checks.port(f"{where}.targetPort", port.target_port)
        if port.number in port_numbers:
            checks.add(f"{where}.number", f"port {port.number} is defined twice")
        if port.name is not None and port.name in port_names:
            checks.add(f"{where}.name", f"port name {port.name!r} is defined twice")
        port_numbers.add(port.number)
        if port.name is not None:
            port_names.add(port.name)
            _port_name(checks, f"{where}.name", port.name)
    checks.one_of(f"{path}.location", spec.location, SERVICE_ENTRY_LOCATIONS)
    checks.one_of(f"{path}.resolution", spec.resolution, SERVICE_ENTRY_RESOLUTIONS)
    _check_service_entry_endpoints(checks, path, spec, port_names)
    return checks.problems


def _check_service_entry_endpoints(checks: FieldChecks, path: str, spec: ServiceEntrySpec, port_names: set[str]) -> None:
    resolution = spec.resolution or "NONE"
    if spec.workload_selector is not None and spec.endpoints:
        checks.add(f"{path}.endpoints", "set only one of workloadSelector and endpoints")
    if resolution == "NONE" and spec.endpoints:
        checks.add(f"{path}.endpoints", "no endpoints should be given for resolution NONE (traffic goes to the original destination)")
    if resolution == "STATIC" and not spec.endpoints and spec.workload_selector is None:
        checks.add(f"{path}.endpoints", "resolution STATIC needs endpoints (or a workloadSelector)")
    if resolution == "DNS_ROUND_ROBIN" and len(spec.endpoints) > 1:
        checks.add(f"{path}.endpoints", f"resolution DNS_ROUND_ROBIN takes at most one endpoint, got "
                                        f"{len(spec.endpoints)} (use DNS for several)")
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not spec.endpoints:
        for i, host in enumerate(spec.hosts):
            if host.startswith("*"):
                checks.add(f"{path}.hosts[{i}]", f"resolution {resolution} without endpoints resolves the hosts themselves, so {host!r} cannot be a wildcard")
    for i, endpoint in enumerate(spec.endpoints):
        where = f"{path}.endpoints[{i}]"
        address = endpoint.address
        if not address:
            checks.add(f"{where}.address", "an endpoint needs an address")
        elif resolution == "STATIC":
            if address.startswith(UNIX_PREFIX):
                _unix_address(checks, where, endpoint)
                if len(spec.ports) != 1:
                    checks.add(f"{where}.address", f"a unix endpoint serves exactly one port; the ServiceEntry "
                                                   f"has {len(spec.ports)}")
            elif not is_ip(address):
                checks.add(f"{where}.address", f"invalid address {address!r}: resolution STATIC needs an IP address or unix:///path")
        elif resolution in ("DNS", "DNS_ROUND_ROBIN"):
            if not (is_ip(address) or is_hostname(address)):
                checks.add(f"{where}.address", f"invalid address {address!r}: resolution {resolution} needs a host name or an IP address")
        for name, number in endpoint.ports.items():
            port_path = join_path(f"{where}.ports", name)
            if name not in port_names:
                checks.add(port_path, f"port name {name!r} is not one of the ServiceEntry's ports")
            _port_name(checks, port_path, name)
            checks.port(port_path, number)
        checks.non_negative(f"{where}.weight", endpoint.weight)


def _unix_address(checks: FieldChecks, where: str, entry: WorkloadEntrySpec) -> None:
    """Istio's ValidateUnixAddress, and a unix endpoint carries no ports."""
    socket = (entry.address or "").removeprefix(UNIX_PREFIX)
    if not socket:
        checks.add(f"{where}.address", "unix address must not be empty: unix:///absolute/path or unix://@abstract")
    elif not socket.startswith("@") and (not socket.startswith("/") or socket.endswith("/")):
        checks.add(f"{where}.address", f"unix address {entry.address!r}: {socket!r} is not an absolute path to a "
                                       "file (or an abstract socket @name)")
    if entry.ports:
        checks.add(f"{where}.ports", f"unix endpoint {entry.address!r} must not include ports")


def _port_name(checks: FieldChecks, where: str, name: str) -> None:
    if not _PORT_NAME.fullmatch(name):
        checks.add(where, f"invalid port name {name!r}: a DNS-1123 label (lowercase alphanumerics and '-')")


def _selector_labels(checks: FieldChecks, path: str, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        if "*" in key or "*" in value:
            checks.add(join_path(path, key), "wildcard is not supported in selector: select workloads by exact labels")


def validate_workload_entry(spec: WorkloadEntrySpec, path: str = "spec") -> list[Problem]:
    checks = FieldChecks()
    if not spec.address:
        if spec.network:
            # Istio accepts it (reached through the network's gateway): Remora has no such gateway.
            checks.add(f"{path}.address", f"a WorkloadEntry without an address (reached through network "
                                          f"{spec.network!r}'s gateway) is not supported by Remora")
        else:
            checks.add(f"{path}.address", "a WorkloadEntry needs an address")
    elif spec.address.startswith(UNIX_PREFIX):
        _unix_address(checks, path, spec)
    elif not (is_ip(spec.address) or is_hostname(spec.address)):
        checks.add(f"{path}.address", f"invalid address {spec.address!r}: expected an IP address, a host name or unix:///path")
    for name, number in spec.ports.items():
        _port_name(checks, join_path(f"{path}.ports", name), name)
        checks.port(join_path(f"{path}.ports", name), number)
    checks.non_negative(f"{path}.weight", spec.weight)
    return checks.problems
