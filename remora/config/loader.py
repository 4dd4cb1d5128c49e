"""The one place that turns Istio YAML into a validated `MeshConfig`.

Rules:
- All or nothing: every problem in every file is collected and raised as one
  `ConfigError`; a caller never sees a half-loaded config.
- Every problem names the file, the resource (Kind/namespace/name) and the field path.
- Kinds Remora reads: ServiceEntry, WorkloadEntry, VirtualService, DestinationRule of
  networking.istio.io v1alpha3/v1beta1/v1, Telemetry of telemetry.istio.io
  v1alpha1/v1, and PeerAuthentication, AuthorizationPolicy, RequestAuthentication of
  security.istio.io v1beta1/v1. Real mesh kinds it does not implement yet
  (gateways, SMI, Linkerd, Consul, ...) are skipped with a warning,
  unless skipping would leave traffic less protected than written (another mesh's
  authorization, a REGISTRY_ONLY Sidecar, a security EnvoyFilter: unenforced.py), which is
  an error; a kind nobody knows is an error, because it is almost always a typo.
- Kubernetes' own kinds, which Istio's samples mix with Istio's: a `v1` Service is a mesh
  service (kube_service.py, served as the ServiceEntry Istio makes of it); Deployment,
  ServiceAccount, ConfigMap and the other kinds of Kubernetes' groups, and kinds of other
  operators' groups, are not mesh config and are skipped with one info line each (`notes`).
- A namespace given by the caller (`-n`, as `kubectl apply -n`) is the namespace of the
  documents that name none.
- The version is a hash of the validated resources only (not of file names, comments or
  order), so the same config loaded twice, or split differently across files, has the
  same version.

Pipeline: YAML -> documents -> identity (kind, apiVersion, metadata) -> schema
(schema.py) -> per-resource rules (validate*.py) -> cross-references (references.py).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Callable

from remora.config import validate, validate_entries
from remora.config.validate_destination_rule import validate_destination_rule
from remora.config.validate_gateway import validate_gateway
from remora.config.validate_sidecar import validate_sidecar
from remora.config.validate_jwt import validate_request_authentication
from remora.config.deprecated import destination_rule_warnings, virtual_service_warnings
from remora.config.validate_security import validate_authorization_policy, validate_peer_authentication
from remora.config.validate_telemetry import telemetry_warnings, validate_telemetry
from remora.config.object_names import LABEL_MAX, identity_problems, shown_part
from remora.config.model import (
    MeshConfig,
    Resource,
)
from remora.config.kinds import (  # noqa: F401  (SPEC_TYPES and the tables are re-exported)
    KUBERNETES_SERVICE, OTHER_GROUPS, SPEC_TYPES, SUPPORTED_GROUP, SUPPORTED_VERSIONS, UNSUPPORTED_KINDS,
    check_kind, non_mesh_kind, supported_group,
)
from remora.config import kube_service
from remora.config.references import check_destinations, host_index, shared_destination_rule_warnings
from remora.config.version import config_version  # noqa: F401  (callers import it from here)
from remora.config.schema import Problem, convert_spec
from remora.config.unenforced import unenforced_security
from remora.config.spec_cache import Remembered, SpecCache  # noqa: F401  (SpecCache is re-exported)
from remora.config.documents import (  # noqa: F401  (ConfigIssue, ConfigError, with_namespace re-exported)
    TOP_LEVEL_FIELDS, Collector, ConfigError, ConfigIssue, Document, parse_yaml, with_namespace, yaml_files,
)


# ---- kinds (tables and the kind/apiVersion check: kinds.py) ---------------------------------

_RULES: dict[str, Callable[[Any], list[Problem]]] = {
    "ServiceEntry": validate_entries.validate_service_entry,
    "WorkloadEntry": validate_entries.validate_workload_entry,
    "VirtualService": validate.validate_virtual_service,
    "DestinationRule": validate_destination_rule,
    "Telemetry": validate_telemetry,
    "PeerAuthentication": validate_peer_authentication,
    "AuthorizationPolicy": validate_authorization_policy,
    "RequestAuthentication": validate_request_authentication,
    "Gateway": validate_gateway,
    "Sidecar": validate_sidecar,
}



class _Loaded:
    """A supported document after the schema check (spec None if that failed)."""

    __slots__ = ("document", "kind", "name", "namespace", "api_version", "spec", "memo", "ref")

    def __init__(self, document: Document, kind: str, name: str, namespace: str, api_version: str, spec: Any,
                 memo: Remembered | None = None) -> None:
        self.document, self.kind, self.name, self.namespace = document, kind, name, namespace
        self.api_version = api_version
        self.spec = spec    # None when the schema check failed
        self.memo = memo    # what the SpecCache remembers of it (clean documents only)
        self.ref = f"{kind}/{namespace}/{name}"


# ---- public API -----------------------------------------------------------------------------

def load_mesh_config(paths: Sequence[str | os.PathLike], namespace: str | None = None) -> MeshConfig:
    """Load YAML files and directories (their *.yaml / *.yml, sorted) as one config set;
    documents without metadata.namespace are in `namespace` (default: "default")."""
    collector = Collector()
    documents: list[Document] = []
    for path in yaml_files(paths, collector):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            collector.issue(str(path), "", "", f"cannot read file: {error}")
            continue
        documents.extend(parse_yaml(text, str(path), collector, namespace))
    return _build(documents, collector)


def load_mesh_text(text: str, source: str = "<memory>", namespace: str | None = None) -> MeshConfig:
    """Load one (multi-document) YAML text as a config set."""
    collector = Collector()
    return _build(parse_yaml(text, source, collector, namespace), collector)


def parse_documents(text: str, source: str, namespace: str | None = None) -> tuple[list[tuple[Any, str]], list[ConfigIssue]]:
    """Parse one (multi-document) YAML text into (document, source) pairs for `build_mesh_config`.

    Returns the documents read before any YAML error, and the error as an issue, so that a
    caller validating several texts can report every problem of the set in one go.
    """
    collector = Collector()
    documents = parse_yaml(text, source, collector, namespace)
    return [(document.body, source) for document in documents], collector.ordered_issues()


def build_mesh_config(docs: list[tuple[dict, str]], strict_references: bool = True,
                      cache: SpecCache | None = None) -> MeshConfig:
    """Validate already-parsed documents, each with the source it came from.

    With `strict_references=False` a route destination naming an unknown host or subset is
    a warning, not an error. A sidecar fed by the control server uses this: the server has
    already checked the whole set strictly, and between two pushes of different resource
    types (clusters, then routes) references may dangle for a moment; such a destination
    answers 503 UH until the other half arrives, as Envoy answers for a missing cluster.
    """
    documents: list[Document] = []
    per_source: dict[str, int] = {}
    for body, source in docs:
        per_source[source] = per_source.get(source, 0) + 1
        documents.append(Document(body, source, per_source[source]))
    return _build(documents, Collector(), strict_references, cache)


# ---- building ---------------------------------------------------------------------------------

def _load_cached(document: Document, collector: Collector, cache: SpecCache | None) -> _Loaded | None:
    if cache is None:
        return _load_document(document, collector)
    hit = cache.recall(document.body)
    if hit is not None:
        return _Loaded(document, hit.kind, hit.name, hit.namespace, hit.api_version, hit.spec, hit)
    before = (len(collector.issues), len(collector.warnings))
    item = _load_document(document, collector)
    if item is not None and item.spec is not None and (len(collector.issues), len(collector.warnings)) == before:
        item.memo = cache.remember(document.body, item.kind, item.name, item.namespace, item.api_version, item.spec)
    return item


def _resource(item: _Loaded) -> Resource:
    """The Resource of a loaded document: the one made last time when the document is unchanged."""
    memo = item.memo
    if memo is not None and memo.resource is not None and memo.resource.source == item.document.source:
        return memo.resource
    if item.kind == KUBERNETES_SERVICE:
        # Served as the ServiceEntry Istio makes of it (kube_service.py), written back as itself.
        resource = kube_service.service_resource(item.name, item.namespace, item.api_version, item.spec,
                                                 item.document.body.get("metadata"), item.document.source)
    else:
        resource = Resource(kind=item.kind, name=item.name, namespace=item.namespace, spec=item.spec,
                            source=item.document.source, api_version=item.api_version)
    if memo is not None:
        memo.resource = resource
    return resource


def _build(documents: list[Document], collector: Collector, strict_references: bool = True,
           cache: SpecCache | None = None) -> MeshConfig:
    loaded: list[_Loaded] = []
    first_seen: dict[str, Document] = {}
    source = None
    for document in documents:
        if document.source is not source:   # documents come file by file
            source = document.source
            collector.saw(source)
        item = _load_cached(document, collector, cache)
        if item is None:
            continue
        if item.ref in first_seen:
            first = first_seen[item.ref]
            collector.issue(document.source, item.ref, "", f"duplicate resource: already defined in {first.source} (document {first.index})", document.index)
            continue
        first_seen[item.ref] = document
        loaded.append(item)

    index = host_index(loaded)
    for item in loaded:
        if item.kind == "VirtualService" and item.spec is not None:
            for problem in check_destinations(item.spec, item.namespace, index):
                if strict_references:
                    collector.issue(item.document.source, item.ref, problem.path, problem.message, item.document.index)
                else:
                    collector.warnings.append(f"{item.ref}: {problem.path}: {problem.message}")
    collector.warnings.extend(shared_destination_rule_warnings(loaded, index))
    for item in loaded:
        if item.kind == "Telemetry" and item.spec is not None:
            collector.warnings.extend(telemetry_warnings(item.spec, item.ref, item.document.source))
        elif item.kind == "DestinationRule" and item.spec is not None:
            collector.warnings.extend(destination_rule_warnings(item.spec, item.ref, item.document.source))
        elif item.kind == "VirtualService" and item.spec is not None:
            collector.warnings.extend(virtual_service_warnings(item.spec, item.ref, item.document.source))
    if cache is not None:
        cache.turn()

    if collector.issues:
        raise ConfigError(collector.ordered_issues())
    resources = {kind: [] for kind in SPEC_TYPES}
    for item in loaded:
        resources["ServiceEntry" if item.kind == KUBERNETES_SERVICE else item.kind].append(_resource(item))
    return MeshConfig(
        service_entries=tuple(resources["ServiceEntry"]),
        workload_entries=tuple(resources["WorkloadEntry"]),
        virtual_services=tuple(resources["VirtualService"]),
        destination_rules=tuple(resources["DestinationRule"]),
        telemetries=tuple(resources["Telemetry"]),
        peer_authentications=tuple(resources["PeerAuthentication"]),
        authorization_policies=tuple(resources["AuthorizationPolicy"]),
        request_authentications=tuple(resources["RequestAuthentication"]),
        gateways=tuple(resources["Gateway"]),
        sidecars=tuple(resources["Sidecar"]),
        version=config_version(r for group in resources.values() for r in group),
        warnings=tuple(collector.warnings),
        notes=tuple(collector.notes),
        skipped=tuple(collector.skipped),
    )


def _load_document(document: Document, collector: Collector) -> _Loaded | None:
    """Identify one document; return it schema-checked if it is a supported kind."""
    body, source = document.body, document.source
    if body is None:
        return None
    if not isinstance(body, dict):
        collector.issue(source, "", "", f"document {document.index}: expected a mapping with apiVersion, kind, metadata and spec, got {type(body).__name__}", document.index)
        return None
    kind, api_version, metadata = body.get("kind"), body.get("apiVersion"), body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    namespace = namespace if isinstance(namespace, str) and namespace else "default"
    shown_kind = kind if isinstance(kind, str) and kind else "?"
    # A bad name printed whole (10,000 characters, or with '/') would drown the message.
    shown_name = shown_part(name) if isinstance(name, str) and name else "?"
    shown_namespace = shown_part(namespace, LABEL_MAX)
    resource = "" if shown_kind == "?" and shown_name == "?" else f"{shown_kind}/{shown_namespace}/{shown_name}"

    def report(path: str, message: str) -> None:
        if not resource:
            message = f"document {document.index}: {message}"
        collector.issue(source, resource, path, message, document.index)

    handling = non_mesh_kind(kind, api_version)
    if handling == "skip":
        collector.notes.append(f"skipped {kind} {shown_namespace}/{shown_name} ({api_version}) in {source}: "
                               "not mesh configuration")
        return None
    if handling is None and not check_kind(kind, api_version, report):
        return None
    if handling is None and (kind not in SPEC_TYPES or api_version.rpartition("/")[0] != supported_group(kind)):
        # e.g. Linkerd's policy.linkerd.io AuthorizationPolicy: same kind name, other API.
        # Skipping is safe only when it leaves traffic no less protected (unenforced.py).
        refused = unenforced_security(api_version.rpartition("/")[0], kind, body.get("spec"))
        if refused is not None:
            report(refused.path, refused.message)
            return None
        collector.warnings.append(f"skipped unsupported kind {kind} ({shown_namespace}/{shown_name}) in {source}")
        collector.skipped.append(f"{kind}/{shown_namespace}/{shown_name}")
        return None

    ok = identified = True
    if not isinstance(metadata, dict):
        report("metadata", "required field is missing" if metadata is None else "expected a mapping")
        ok = False
    elif not isinstance(name, str) or not name:
        report("metadata.name", "required field is missing" if name is None else "expected a non-empty string")
        ok = False
    elif "namespace" in metadata and not (isinstance(metadata["namespace"], str) and metadata["namespace"]):
        report("metadata.namespace", "expected a non-empty string")
        ok = False
    else:
        # The identity Kind/namespace/name is a key (control store, state file): Kubernetes' rules.
        for path, message in identity_problems(namespace, name):
            report(path, message)
            ok = identified = False
    for key in body:
        if key not in TOP_LEVEL_FIELDS:
            report(str(key), f"unknown top-level field `{key}` (expected apiVersion, kind, metadata, spec)")
            ok = False
    spec_type = kube_service.KubeServiceSpec if handling == "service" else SPEC_TYPES[kind]
    spec, problems = convert_spec(body.get("spec"), spec_type)
    if spec is not None and kind == "VirtualService":
        spec, header_problems = validate.normalize_header_keys(spec)
        problems += header_problems
    if spec is not None and handling == "service":
        problems += kube_service.validate_service(spec, name if isinstance(name, str) else "")
    elif spec is not None:
        problems += _RULES[kind](spec)
    for problem in problems:
        report(problem.path, problem.message)
    if not isinstance(name, str) or not name or not identified:
        return None  # no identity: cannot be checked for duplicates or referenced
    return _Loaded(document, kind, name, namespace, api_version, spec if ok else None)
