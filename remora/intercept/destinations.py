"""Original destination -> mesh service: which ServiceEntry a captured connection was meant for.

A captured connection carries only the address the app dialled. It belongs to a mesh
service when that address is one of the ServiceEntry's `addresses` (its VIPs, single IPs
or CIDRs) on one of its port numbers, or one of its endpoints (address and endpoint port).
VIPs win over endpoints. The port's declared protocol says whether bytes are HTTP (routed
per request) or opaque TCP: Istio's `protocol` field, else the port name's prefix
(`tcp-db`, `http-web`); undeclared ports are sniffed.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from remora.config.names import qualify_host
from remora.config.protocols import HTTP_PROTOCOLS, declared_protocol  # noqa: F401  (re-exported)



@dataclass(frozen=True)
class MeshDestination:
    """One port of one mesh service, and how its bytes are carried."""

    fqdn: str
    port: int
    protocol: str | None    # declared protocol, upper case; None: not declared (sniff)

    @property
    def opaque(self) -> bool:
        """Declared as something other than HTTP: proxied as TCP without looking at the bytes."""
        return self.protocol is not None and self.protocol not in HTTP_PROTOCOLS

    @property
    def authority(self) -> bytes:
        """The route table key of this service port (`fqdn:port`)."""
        return f"{self.fqdn}:{self.port}".encode()


class DestinationIndex:
    """(ip, port) -> MeshDestination, compiled once per config version."""

    def __init__(self, config, services) -> None:
        self.exact: dict[tuple[str, int], MeshDestination] = {}
        self.networks: list[tuple[object, int, MeshDestination]] = []
        endpoints: dict[tuple[str, int], MeshDestination] = {}
        for se in config.service_entries:
            for host in se.spec.hosts:
                fqdn = qualify_host(host, se.namespace)
                info = services.get(fqdn)
                for port in se.spec.ports:
                    dest = MeshDestination(fqdn, port.number, declared_protocol(port.protocol, port.name))
                    for address in se.spec.addresses:
                        self._add_address(address, port.number, dest)
                    cluster = info.clusters.get((port.number, None)) if info is not None else None
                    for ep in (cluster.endpoints if cluster is not None else ()):
                        endpoints.setdefault((ep.host, ep.port), dest)
        for key, dest in endpoints.items():
            self.exact.setdefault(key, dest)

    def _add_address(self, address: str, port: int, dest: MeshDestination) -> None:
        try:
            network = ipaddress.ip_network(address, strict=False)
        except ValueError:
            return      # validation reports bad addresses; nothing to capture for them
        if network.num_addresses == 1:
            self.exact.setdefault((str(network.network_address), port), dest)
        else:
            self.networks.append((network, port, dest))

    def find(self, ip: str, port: int) -> MeshDestination | None:
        """The mesh service port an original destination belongs to, or None."""
        found = self.exact.get((ip, port))
        if found is not None or not self.networks:
            return found
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for network, net_port, dest in self.networks:
            if net_port == port and address.version == network.version and address in network:
                return dest
        return None
