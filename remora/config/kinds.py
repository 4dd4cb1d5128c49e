"""The kinds the config loader knows: Istio kinds it reads (and their API groups and
versions), real mesh kinds it skips with a warning, and the kind/apiVersion check every
document passes first (unknown kinds are errors, with a "did you mean")."""
from __future__ import annotations

import difflib
from typing import Any, Callable

from remora.config.model import DestinationRuleSpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec
from remora.config.model_policy import AuthorizationPolicySpec, PeerAuthenticationSpec, TelemetrySpec
from remora.config.model_gateway import GatewaySpec
from remora.config.model_sidecar import SidecarSpec
from remora.config.model_jwt import RequestAuthenticationSpec

SUPPORTED_GROUP = "networking.istio.io"
SUPPORTED_VERSIONS = ("v1", "v1beta1", "v1alpha3")
SPEC_TYPES: dict[str, type] = {
    "ServiceEntry": ServiceEntrySpec,
    "WorkloadEntry": WorkloadEntrySpec,
    "VirtualService": VirtualServiceSpec,
    "DestinationRule": DestinationRuleSpec,
    "Telemetry": TelemetrySpec,
    "PeerAuthentication": PeerAuthenticationSpec,
    "AuthorizationPolicy": AuthorizationPolicySpec,
    "RequestAuthentication": RequestAuthenticationSpec,
    "Gateway": GatewaySpec,
    "Sidecar": SidecarSpec,
}
# Supported kinds outside networking.istio.io: their group and versions.
OTHER_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Telemetry": ("telemetry.istio.io", ("v1", "v1alpha1")),
    "PeerAuthentication": ("security.istio.io", ("v1", "v1beta1")),
    "AuthorizationPolicy": ("security.istio.io", ("v1", "v1beta1")),
    "RequestAuthentication": ("security.istio.io", ("v1", "v1beta1")),
}

# Real mesh kinds, by API group, that Remora does not implement yet: skipped with a
# warning so that a directory written for Istio, Linkerd or Consul still loads the parts
# Remora understands.
UNSUPPORTED_KINDS: dict[str, frozenset[str]] = {
    "networking.istio.io": frozenset({"EnvoyFilter", "WorkloadGroup", "ProxyConfig"}),
    "extensions.istio.io": frozenset({"WasmPlugin"}),
    "split.smi-spec.io": frozenset({"TrafficSplit"}),
    "specs.smi-spec.io": frozenset({"HTTPRouteGroup", "TCPRoute", "UDPRoute"}),
    "access.smi-spec.io": frozenset({"TrafficTarget"}),
    "linkerd.io": frozenset({"ServiceProfile"}),
    "policy.linkerd.io": frozenset({
        "Server", "ServerAuthorization", "AuthorizationPolicy", "HTTPRoute",
        "MeshTLSAuthentication", "NetworkAuthentication",
    }),
    "consul.hashicorp.com": frozenset({
        "ServiceIntentions", "ServiceDefaults", "ServiceSplitter", "ServiceResolver",
        "ServiceRouter", "ProxyDefaults", "Mesh", "ExportedServices", "IngressGateway",
        "TerminatingGateway", "SamenessGroup", "JWTProvider",
    }),
    "gateway.networking.k8s.io": frozenset({"Gateway", "GatewayClass", "HTTPRoute", "GRPCRoute", "ReferenceGrant"}),
}

def supported_group(kind: str) -> str:
    """The API group of a supported kind."""
    return OTHER_GROUPS.get(kind, (SUPPORTED_GROUP, ()))[0]


def _groups_of(kind: str) -> list[str]:
    groups = [group for group, kinds in UNSUPPORTED_KINDS.items() if kind in kinds]
    if kind in OTHER_GROUPS:
        return groups + [OTHER_GROUPS[kind][0]]
    return groups + ([SUPPORTED_GROUP] if kind in SPEC_TYPES else [])



def check_kind(kind: Any, api_version: Any, report: Callable[[str, str], None]) -> bool:
    """True if the document is a kind this loader knows (supported or skipped)."""
    if not isinstance(api_version, str) or not api_version:
        report("apiVersion", "required field is missing")
        return False
    if not isinstance(kind, str) or not kind:
        report("kind", "required field is missing")
        return False
    group, _, version = api_version.rpartition("/")
    groups = _groups_of(kind)
    kube_groups = [g for g, kinds in KUBERNETES_GROUPS.items() if kind in kinds]
    if not groups and kube_groups:
        names = " or ".join(g or "core (apiVersion v1)" for g in kube_groups)
        report("apiVersion", f"kind {kind} belongs to the Kubernetes API group {names}, not {api_version}")
        return False
    if not groups:
        known = sorted({k for kinds in UNSUPPORTED_KINDS.values() for k in kinds} | set(SPEC_TYPES)
                       | {k for kinds in KUBERNETES_GROUPS.values() for k in kinds})
        close = difflib.get_close_matches(kind, known, n=1, cutoff=0.8)
        hint = f"did you mean {close[0]}?" if close else f"Remora reads {', '.join(SPEC_TYPES)}"
        report("kind", f"unknown kind {kind!r} ({api_version}): {hint}")
        return False
    if group not in groups:
        report("apiVersion", f"kind {kind} belongs to API group {' or '.join(groups)}, not {group or 'the core group'!s} ({api_version})")
        return False
    if kind in SPEC_TYPES:
        supported_group_, versions = OTHER_GROUPS.get(kind, (SUPPORTED_GROUP, SUPPORTED_VERSIONS))
        if group == supported_group_ and version not in versions:
            report("apiVersion", f"unsupported version {api_version} for {kind}; use {', '.join(f'{supported_group_}/{v}' for v in versions)}")
            return False
    return True


# ---- Kubernetes' own kinds ----------------------------------------------------------------
# A manifest written for Istio mixes them with Istio's (bookinfo.yaml: Service,
# ServiceAccount, Deployment). `Service` (core v1) defines a mesh service (kube_service.py);
# the others are not mesh config and are skipped with an info line. Within these groups a
# kind Kubernetes does not have is still an error (`Servce` is a typo, not a skip).
KUBERNETES_SERVICE = "Service"
KUBERNETES_GROUPS: dict[str, frozenset[str]] = {
    "": frozenset({"Service", "ServiceAccount", "Pod", "ConfigMap", "Secret", "Namespace", "Endpoints",
                   "PersistentVolume", "PersistentVolumeClaim", "ReplicationController", "LimitRange",
                   "ResourceQuota", "Node", "Event", "PodTemplate"}),
    "apps": frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ControllerRevision"}),
    "batch": frozenset({"Job", "CronJob"}),
    "autoscaling": frozenset({"HorizontalPodAutoscaler"}),
    "policy": frozenset({"PodDisruptionBudget"}),
    "rbac.authorization.k8s.io": frozenset({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}),
    # NetworkPolicy is enforced by the cluster's network plugin, never by a mesh proxy
    # (Istio ignores it too), so skipping it leaves it exactly as enforced as before.
    "networking.k8s.io": frozenset({"NetworkPolicy", "Ingress", "IngressClass"}),
    "discovery.k8s.io": frozenset({"EndpointSlice"}),
    "storage.k8s.io": frozenset({"StorageClass", "VolumeAttachment", "CSIDriver", "CSINode"}),
    "apiextensions.k8s.io": frozenset({"CustomResourceDefinition"}),
    "admissionregistration.k8s.io": frozenset({"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
                                               "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}),
    "scheduling.k8s.io": frozenset({"PriorityClass"}),
    "coordination.k8s.io": frozenset({"Lease"}),
    "certificates.k8s.io": frozenset({"CertificateSigningRequest"}),
    "node.k8s.io": frozenset({"RuntimeClass"}),
}
# Kinds the control server stores (and `remora get` names): the mesh kinds and Service.
STORED_KINDS: tuple[str, ...] = (*SPEC_TYPES, KUBERNETES_SERVICE)
_MESH_GROUP_SUFFIXES = (".istio.io", "smi-spec.io", "linkerd.io", "consul.hashicorp.com", "gateway.networking.k8s.io")


def non_mesh_kind(kind: Any, api_version: Any) -> str | None:
    """How a document outside the mesh API groups is handled: "service" (a Kubernetes
    Service), "skip" (a non-mesh kind: an info line), or None (the mesh checks apply:
    a mesh group, a mesh kind in a wrong group, a typo of a Kubernetes kind)."""
    if not isinstance(kind, str) or not kind or not isinstance(api_version, str) or not api_version:
        return None
    group = api_version.rpartition("/")[0]
    if group.endswith(_MESH_GROUP_SUFFIXES) or group in UNSUPPORTED_KINDS:
        return None
    mesh_kinds = {k for kinds in UNSUPPORTED_KINDS.values() for k in kinds} | set(SPEC_TYPES)
    if kind in mesh_kinds or difflib.get_close_matches(kind, mesh_kinds, n=1, cutoff=0.85):
        return None   # VirtualService in the wrong group: check_kind names the right one
    if group in KUBERNETES_GROUPS:
        if kind not in KUBERNETES_GROUPS[group]:
            return None   # check_kind: unknown kind, with a "did you mean"
        return "service" if (group, kind) == ("", KUBERNETES_SERVICE) else "skip"
    return "skip"   # another operator's kind (cert-manager, Prometheus, ...): not mesh config
