"""`remora analyze` warnings: a valid config that will not do what its author likely meant.

Like istioctl analyze's analyzers, these look across the whole set and never refuse it:
- a DestinationRule with `tls.mode: ISTIO_MUTUAL` when no workload certificate is known
  (`has_certificate=False`: a files sidecar without --cert-dir; None: analyze, which cannot
  know): every request it governs fails 503 UF until the sidecar has one;
- a DestinationRule subset whose labels match none of the endpoints its host has in this
  config (ServiceEntry endpoints and the WorkloadEntries its workloadSelector, or a
  Kubernetes Service's selector, picks); a host with no endpoint in the config is not
  judged, and sidecars registering with a control server may add endpoints, so the message
  says so;
- a WorkloadEntry selected by a Kubernetes Service whose port has a named targetPort the
  entry does not list: Istio leaves it out of that port, Remora sends it the service port;
- a VirtualService bound to a Gateway (`gateways`, or `match[].gateways`) that no Gateway
  in the set defines (Istio's analyzer: "Referenced gateway not found"), or whose hosts the
  Gateway's server hosts do not admit (IST0132, VirtualServiceHostNotFoundInGateway);
- one host defined by two services (ServiceEntries, Kubernetes Services) of one namespace:
  a sidecar keeps one definition per port, so which endpoints serve is not what either says
  (Istio's analyzer warns about conflicting ServiceEntry hosts too).
"""
from __future__ import annotations

from remora.config.gateways import MESH_GATEWAY, host_intersection, resolve_gateway_name, server_hosts_for
from remora.config.model import MeshConfig, Resource, WorkloadEntrySpec
from remora.config.names import qualify_host


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _endpoints_by_host(config: MeshConfig) -> dict[str, list[WorkloadEntrySpec]]:
    found: dict[str, list[WorkloadEntrySpec]] = {}
    for entry in config.service_entries:
        endpoints = list(entry.spec.endpoints)
        selector = entry.spec.workload_selector
        if selector is not None:
            endpoints += [we.spec for we in config.workload_entries
                          if we.namespace == entry.namespace and _selects(selector.labels, we.spec.labels)]
        for host in entry.spec.hosts:
            found.setdefault(qualify_host(host, entry.namespace), []).extend(endpoints)
    return found


def _istio_mutual_paths(rule: Resource) -> list[str]:
    paths = []
    for path, policy in [("spec.trafficPolicy", rule.spec.traffic_policy),
                         *((f"spec.subsets[{i}].trafficPolicy", s.traffic_policy)
                           for i, s in enumerate(rule.spec.subsets))]:
        if policy is None:
            continue
        layers = [(path, policy.tls)] + [(f"{path}.portLevelSettings[{i}]", p.tls)
                                         for i, p in enumerate(policy.port_level_settings)]
        paths += [f"{where}.tls.mode" for where, tls in layers
                  if tls is not None and (tls.mode or "").upper() == "ISTIO_MUTUAL"]
    return paths


def certificate_warnings(config: MeshConfig, has_certificate: bool | None) -> list[str]:
    """ISTIO_MUTUAL without a certificate source (see the module doc)."""
    if has_certificate:
        return []
    need = ("this sidecar has none (give --cert-dir DIR, or --token with --control)" if has_certificate is False
            else "give a sidecar that applies it `remora proxy --cert-dir DIR`, or `--token` with `--control`")
    return [f"{rule.ref} in {rule.source}: {path}: ISTIO_MUTUAL needs a workload certificate: {need}; "
            f"without one every request it governs fails with 503 UF"
            for rule in config.destination_rules for path in _istio_mutual_paths(rule)]


def subset_warnings(config: MeshConfig) -> list[str]:
    endpoints = _endpoints_by_host(config)
    warnings = []
    for rule in config.destination_rules:
        host = qualify_host(rule.spec.host, rule.namespace)
        if not endpoints.get(host):
            # No endpoint in the files: they come from elsewhere (pods, sidecars that register,
            # DNS), so there is nothing to compare with, and a warning per subset would be noise.
            continue
        for i, subset in enumerate(rule.spec.subsets):
            if subset.labels and not any(_selects(subset.labels, ep.labels) for ep in endpoints[host]):
                labels = ",".join(f"{k}={v}" for k, v in sorted(subset.labels.items()))
                warnings.append(f"{rule.ref} in {rule.source}: spec.subsets[{i}] ({subset.name}): no endpoint of "
                                f"{host} in this config has labels {labels} (sidecars that register with a "
                                f"control server may add some); requests routed to it fail with 503 UH")
    return warnings


def target_port_warnings(config: MeshConfig) -> list[str]:
    warnings = []
    for service in config.service_entries:
        if service.kind != "Service" or service.spec.workload_selector is None or service.written is None:
            continue
        named = [(i, p["targetPort"]) for i, p in enumerate(service.written["spec"].get("ports", []))
                 if isinstance(p.get("targetPort"), str)]
        for we in config.workload_entries:
            if we.namespace != service.namespace or not _selects(service.spec.workload_selector.labels, we.spec.labels):
                continue
            for i, name in named:
                if name not in we.spec.ports:
                    warnings.append(f"{we.ref} in {we.source}: spec.ports: no port named {name!r}, the targetPort of "
                                    f"{service.ref} spec.ports[{i}]; Istio leaves this workload out of that port, "
                                    f"Remora sends it the service port: add `{name}` to its ports")
    return warnings


def gateway_warnings(config: MeshConfig) -> list[str]:
    defined = {f"{gw.namespace}/{gw.name}": gw for gw in config.gateways}
    warnings = []
    for vs in config.virtual_services:
        refs = [("spec.gateways", name) for name in vs.spec.gateways]
        refs += [(f"spec.http[{i}].match[{j}].gateways", name) for i, route in enumerate(vs.spec.http)
                 for j, match in enumerate(route.match) for name in match.gateways]
        for path, name in refs:
            if name == MESH_GATEWAY:
                continue
            qualified = resolve_gateway_name(name, vs.namespace)
            gateway = defined.get(qualified)
            if gateway is None:
                warnings.append(f"{vs.ref} in {vs.source}: {path}: gateway {qualified!r} is not defined by any "
                                f"Gateway in this config; the routes bound to it serve nowhere")
            elif path == "spec.gateways":
                warnings += _hosts_not_in_gateway(vs, gateway)
    return warnings


def _hosts_not_in_gateway(vs: Resource, gateway: Resource) -> list[str]:
    """Istio's IST0132 (VirtualServiceHostNotFoundInGateway): VirtualService hosts that none
    of the Gateway's server hosts admit (their namespace qualifiers applied)."""
    server_hosts = [h for server in gateway.spec.servers
                    for h in server_hosts_for(server.hosts, gateway.namespace, vs.namespace)]
    missing = [host for host in vs.spec.hosts
               if not any(host_intersection(server, host) for server in server_hosts)]
    if not missing:
        return []
    return [f"{vs.ref} in {vs.source}: spec.hosts: {', '.join(missing)} not found in {gateway.ref}'s server "
            f"hosts; the gateway serves no route of this VirtualService for {'it' if len(missing) == 1 else 'them'}"]


def duplicate_host_warnings(config: MeshConfig) -> list[str]:
    first: dict[tuple[str, str], Resource] = {}
    warnings = []
    for service in config.service_entries:
        for host in {qualify_host(h, service.namespace) for h in service.spec.hosts}:
            seen = first.setdefault((service.namespace, host), service)
            if seen is not service:
                warnings.append(f"{service.ref} in {service.source}: host {host} is also defined by {seen.ref} "
                                f"({seen.source}); a sidecar keeps one definition per port, so give the host "
                                "one service (add endpoints with WorkloadEntries instead)")
    return warnings


def analysis_warnings(config: MeshConfig, has_certificate: bool | None = None) -> list[str]:
    """Every analyzer above, in a stable order."""
    return (certificate_warnings(config, has_certificate) + subset_warnings(config)
            + target_port_warnings(config) + gateway_warnings(config) + duplicate_host_warnings(config))
