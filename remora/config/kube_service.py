"""A Kubernetes `Service` read as the mesh service Istio makes of it.

Rules (Istio: pilot/pkg/serviceregistry/kube/conversion.go ConvertService, and the kube
controller's serviceInstancesFromWorkloadInstance for WorkloadEntries a Service selects):
- Host `<name>.<namespace>.svc.cluster.local`; clients may also say `<name>`,
  `<name>.<namespace>` and `<name>.<namespace>.svc` (names.host_aliases).
- Ports keep their numbers; the protocol is Istio's protocol selection (protocols.py:
  appProtocol, else the port name's prefix). UDP and SCTP ports are left out: a sidecar
  proxies TCP only (Istio's sidecars leave them out too).
- Endpoints are the workloads in the Service's namespace whose labels match `selector`:
  WorkloadEntries and, under the control server, the registered sidecars. `targetPort`
  maps the service port to the workload port: a number is used unless the workload names
  the port (a WorkloadEntry `ports` entry under the service port's name wins, as in
  Istio); a name is looked up in the workload's `ports`. A Service without a selector has
  no endpoints (its EndpointSlices are not read).
- `type: ExternalName` is an external DNS name (resolution DNS, MESH_EXTERNAL), as Istio
  aliases it. `clusterIP`/`clusterIPs` become the service's addresses (capture matches
  them); a headless Service (`clusterIP: None`) is balanced over its selected endpoints.
- The `networking.istio.io/exportTo` annotation is its exportTo.

The conversion produces a `ServiceEntrySpec`, so clusters, the control server's
snapshots, capture and the Envoy renderer serve a Service through the same path as a
ServiceEntry; the resource keeps kind `Service` and its Kubernetes spec (`document()`).
A named targetPort becomes the converted port's name (an unnamed port is `port-<number>`),
which is the key a WorkloadEntry's `ports` map is read with (workload_port_name); a workload
without that name is sent the service port (Istio leaves such a workload out of that port:
`remora analyze` warns about it, analysis.py).
"""
from __future__ import annotations

import re
from typing import Any

import msgspec

from remora.config.field_checks import LABEL_KEY, is_ip
from remora.config.model import Resource, ServiceEntrySpec, ServicePort, Spec, WorkloadEntrySpec, WorkloadSelector
from remora.config.protocols import declared_protocol
from remora.config.schema import Problem

API_VERSION = "v1"
KIND = "Service"
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"
SERVICE_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
PORT_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


class KubeServicePort(Spec):
    port: int
    name: str | None = None
    protocol: str | None = None
    app_protocol: str | None = None
    target_port: int | str | None = None
    node_port: int | None = None


class KubeServiceSpec(Spec):
    """core/v1 ServiceSpec: every field Kubernetes has (so a typo is still an error); the
    ones without a meaning for a sidecar (node ports, load balancers, affinity) are read
    and have no effect, as in Istio's sidecars."""

    ports: list[KubeServicePort] = []
    selector: dict[str, str] = {}
    type: str | None = None
    cluster_ip: str | None = msgspec.field(default=None, name="clusterIP")
    cluster_ips: list[str] = msgspec.field(default_factory=list, name="clusterIPs")
    external_name: str | None = None
    external_ips: list[str] = msgspec.field(default_factory=list, name="externalIPs")
    session_affinity: str | None = None
    session_affinity_config: dict[str, Any] = {}
    publish_not_ready_addresses: bool | None = None
    ip_families: list[str] = []
    ip_family_policy: str | None = None
    external_traffic_policy: str | None = None
    internal_traffic_policy: str | None = None
    health_check_node_port: int | None = None
    load_balancer_ip: str | None = msgspec.field(default=None, name="loadBalancerIP")
    load_balancer_source_ranges: list[str] = []
    load_balancer_class: str | None = None
    allocate_load_balancer_node_ports: bool | None = None
    traffic_distribution: str | None = None


def fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def validate_service(spec: KubeServiceSpec, name: str, path: str = "spec") -> list[Problem]:
    """Kubernetes' own rules for a Service (apimachinery ValidateService), the ones a file can break."""
    problems: list[Problem] = []

    def add(where: str, message: str) -> None:
        problems.append(Problem(where, message))

    if len(name) > 63 or not _DNS_1035.fullmatch(name):
        add("metadata.name", f"{name[:40]!r}: a Service name must be a DNS-1035 label (at most 63 "
                             "lowercase alphanumerics or '-', starting with a letter)")
    kind = spec.type or "ClusterIP"
    if kind not in SERVICE_TYPES:
        add(f"{path}.type", f"unsupported value {kind!r}: expected one of {', '.join(sorted(SERVICE_TYPES))}")
    if kind == "ExternalName":
        if not spec.external_name:
            add(f"{path}.externalName", "required for type ExternalName")
    headless = spec.cluster_ip == "None"
    if not spec.ports and kind != "ExternalName" and not headless:
        add(f"{path}.ports", "required value: a Service needs at least one port (unless headless or ExternalName)")
    if spec.cluster_ip and spec.cluster_ip != "None" and not is_ip(spec.cluster_ip):
        add(f"{path}.clusterIP", f"{spec.cluster_ip!r} must be a valid IP address or None")
    for i, address in enumerate(spec.cluster_ips):
        if address != "None" and not is_ip(address):
            add(f"{path}.clusterIPs[{i}]", f"{address!r} must be a valid IP address or None")
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    for i, port in enumerate(spec.ports):
        where = f"{path}.ports[{i}]"
        if not 0 < port.port < 65536:
            add(f"{where}.port", f"{port.port} must be between 1 and 65535")
        if port.name:
            if len(port.name) > 63 or not _IANA_SVC_NAME.fullmatch(port.name):
                add(f"{where}.name", f"{port.name!r} must be a DNS-1123 label")
            if port.name in seen_names:
                add(f"{where}.name", f"duplicate port name {port.name!r}")
            seen_names.add(port.name)
        elif len(spec.ports) > 1:
            add(f"{where}.name", "required when a Service has more than one port")
        protocol = port.protocol or "TCP"
        if protocol not in PORT_PROTOCOLS:
            add(f"{where}.protocol", f"unsupported value {protocol!r}: expected TCP, UDP or SCTP")
        if (port.port, protocol) in seen_ports:
            add(where, f"duplicate port {port.port}/{protocol}")
        seen_ports.add((port.port, protocol))
        target = port.target_port
        if isinstance(target, bool):
            add(f"{where}.targetPort", "expected a port number or a port name")
        elif isinstance(target, int) and not 0 < target < 65536:
            add(f"{where}.targetPort", f"{target} must be between 1 and 65535")
        elif isinstance(target, str) and not (len(target) <= 15 and _IANA_SVC_NAME.fullmatch(target)
                                              and "--" not in target and re.search("[a-z]", target)):
            add(f"{where}.targetPort", f"{target!r} must be a port number or an IANA service name "
                                       "(at most 15 lowercase alphanumerics or '-', with a letter)")
    for key, value in spec.selector.items():
        where = f'{path}.selector["{key}"]' if not re.fullmatch(r"[A-Za-z0-9_-]+", key) else f"{path}.selector.{key}"
        if not LABEL_KEY.fullmatch(key) or len(key.rsplit("/", 1)[-1]) > 63:
            add(where, f"invalid label key {key!r}")
        if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            add(where, f"invalid label value {value!r}: at most 63 alphanumerics, '-', '_' or '.', "
                       "starting and ending with an alphanumeric (no wildcards)")
    return problems


def workload_port_name(name: Any, target_port: Any, number: Any) -> str:
    """The key a workload's `ports` map is read with for this service port: a named
    targetPort, else the port's name, else `port-<number>` (a registered sidecar maps every
    key of its service to its inbound port, so even an unnamed port needs one)."""
    if isinstance(target_port, str) and target_port:
        return target_port
    return name if isinstance(name, str) and name else f"port-{number}"


def service_entry_spec(spec: KubeServiceSpec, name: str, namespace: str,
                       annotations: dict[str, Any] | None = None) -> ServiceEntrySpec:
    """The ServiceEntry Istio's registry makes of this Service (see the module doc)."""
    ports = []
    for port in spec.ports:
        if (port.protocol or "TCP") != "TCP":
            continue   # UDP / SCTP: not proxied
        ports.append(ServicePort(
            number=port.port,
            name=workload_port_name(port.name, port.target_port, port.port),
            protocol=declared_protocol(None, port.name, port.app_protocol, port.port),
            target_port=port.target_port if isinstance(port.target_port, int) else None,
        ))
    export_to = []
    text = (annotations or {}).get(EXPORT_TO_ANNOTATION)
    if isinstance(text, str) and text.strip():
        export_to = [part.strip() for part in text.split(",") if part.strip()]
    if spec.type == "ExternalName":
        return ServiceEntrySpec(hosts=[fqdn(name, namespace)], ports=ports, location="MESH_EXTERNAL",
                                resolution="DNS", endpoints=[WorkloadEntrySpec(address=spec.external_name)],
                                export_to=export_to)
    addresses = [a for a in (spec.cluster_ips or ([spec.cluster_ip] if spec.cluster_ip else [])) if is_ip(a)]
    return ServiceEntrySpec(
        hosts=[fqdn(name, namespace)], addresses=addresses, ports=ports, location="MESH_INTERNAL",
        resolution="STATIC", export_to=export_to,
        # An empty selector is no selector: the API server stores `selector: {}` as none.
        workload_selector=WorkloadSelector(labels=dict(spec.selector)) if spec.selector else None,
    )


def service_resource(name: str, namespace: str, api_version: str, spec: KubeServiceSpec, metadata: Any,
                     source: str) -> Resource:
    """The Resource a validated Service becomes: served as its ServiceEntry, written as itself."""
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    kept = {key: value for key, value in (annotations if isinstance(annotations, dict) else {}).items()
            if key == EXPORT_TO_ANNOTATION}
    written_metadata = {"name": name, "namespace": namespace, **({"annotations": kept} if kept else {})}
    written = {"apiVersion": api_version, "kind": KIND, "metadata": written_metadata,
               "spec": msgspec.to_builtins(spec)}
    return Resource(kind=KIND, name=name, namespace=namespace,
                    spec=service_entry_spec(spec, name, namespace, kept),
                    source=source, api_version=api_version, written=written)


def service_entry_document(doc: dict) -> dict:
    """A validated Service document as the equivalent ServiceEntry document (Envoy renderer)."""
    metadata = doc.get("metadata") or {}
    namespace = metadata.get("namespace") or "default"
    spec = msgspec.convert(doc.get("spec") or {}, KubeServiceSpec)
    converted = service_entry_spec(spec, metadata["name"], namespace, metadata.get("annotations"))
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": metadata["name"], "namespace": namespace},
            "spec": msgspec.to_builtins(converted)}
