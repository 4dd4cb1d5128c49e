"""deploy/kubernetes: valid Kubernetes objects, wired together, with arguments `remora control` accepts."""
from __future__ import annotations

import posixpath
from pathlib import Path

import pytest

from remora.cli import build_parser
from remora.config.loader import ConfigError
from remora.kube.sidecar import DEFAULT_CONTROL
from remora.xds.store import read_sources, validate_documents
from tests.kube_manifests import DEPLOY, control_pod, documents, find, flag


@pytest.mark.parametrize("name, obj", documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_shipped_object_validates(name, obj):
    """Each document of deploy/kubernetes is a valid object of its kind, without unknown fields."""
    from tests.kube_schema import problems
    assert problems(obj) == []


def test_shipped_set_is_complete():
    """Namespace, ServiceAccount, ClusterRole(+Binding), ConfigMap, PVC, Deployment and Service are
    there, and the gateway's Role(+Binding) on Secrets."""
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in documents()}
    assert kinds == {("Namespace", "remora-system"), ("ServiceAccount", "remora-control"),
                     ("ClusterRole", "remora-control"), ("ClusterRoleBinding", "remora-control"),
                     ("ConfigMap", "remora-mesh-config"), ("PersistentVolumeClaim", "remora-control-state"),
                     ("Deployment", "remora-control"), ("Service", "remora-control"),
                     ("Namespace", "istio-system"), ("ServiceAccount", "istio-ingressgateway-service-account"),
                     ("Deployment", "istio-ingressgateway"), ("Service", "istio-ingressgateway"),
                     ("Role", "istio-ingressgateway-sds"), ("RoleBinding", "istio-ingressgateway-sds"),
                     ("MutatingWebhookConfiguration", "remora-sidecar-injector")}


def test_control_args_parse_with_remora_control():
    """The container's args are a `remora control` command line its own parser accepts."""
    _, container = control_pod()
    args = build_parser().parse_args(container["args"])
    assert args.command == "control"
    assert args.listen == "0.0.0.0:15010"


def test_paths_in_args_are_the_mounted_volumes():
    """--config-dir is the ConfigMap, the CA files are in the cacerts Secret, --state-dir is the PVC,
    --admin-token-file is key `token` of the remora-admin-token Secret (0440)."""
    spec, container = control_pod()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    def volume_of(path: str) -> dict:
        directory = posixpath.dirname(path) if "." in posixpath.basename(path) else path
        return volumes[mounts[directory]]

    args = container["args"]
    assert volume_of(flag(args, "--config-dir"))["configMap"]["name"] == "remora-mesh-config"
    assert volume_of(flag(args, "--state-dir"))["persistentVolumeClaim"]["claimName"] == "remora-control-state"
    for name, key in (("--ca-cert", "ca-cert.pem"), ("--ca-key", "ca-key.pem"), ("--ca-chain", "cert-chain.pem")):
        assert volume_of(flag(args, name))["secret"]["secretName"] == "cacerts"
        assert posixpath.basename(flag(args, name)) == key  # Istio's cacerts file names
    admin = flag(args, "--admin-token-file")
    assert volumes[mounts[posixpath.dirname(admin)]]["secret"] == {"secretName": "remora-admin-token",
                                                                  "defaultMode": 0o440}
    assert posixpath.basename(admin) == "token"   # the Secret's key


def test_runs_as_1337_and_probes_healthz_on_the_service_port():
    """Non-root 1337, probes on /healthz at the listen port, and the Service forwards that port."""
    spec, container = control_pod()
    assert spec["securityContext"]["runAsUser"] == 1337 and spec["securityContext"]["runAsNonRoot"]
    port = int(flag(container["args"], "--listen").rsplit(":", 1)[1])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port}
    service = find("Service", "remora-control")
    assert service["spec"]["selector"] == find("Deployment", "remora-control")["spec"]["selector"]["matchLabels"]
    service_port = next(p for p in service["spec"]["ports"] if p["name"] == "http-control")
    assert service_port["port"] == port
    assert service_port["targetPort"] == container["ports"][0]["name"]


def test_inject_default_control_url_is_the_shipped_service():
    """`remora inject` points sidecars at this Service by default."""
    service = find("Service", "remora-control")
    assert DEFAULT_CONTROL == (f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:"
                               f"{service['spec']['ports'][0]['port']}")


def test_cluster_role_only_reads_the_kinds_the_server_serves():
    """The ClusterRole grants get/list/watch, nothing else, on exactly the served Istio kinds and
    what `--kubernetes` watches (kube/registry.py KINDS), each in its API group."""
    from remora.config.loader import SPEC_TYPES
    from remora.kube.registry import KINDS
    rules = find("ClusterRole", "remora-control")["rules"]
    assert all(rule["verbs"] == ["get", "list", "watch"] for rule in rules)
    resources = {r for rule in rules for r in rule["resources"]}
    plural = {kind.lower()[:-1] + "ies" if kind.endswith("y") and kind[-2] not in "aeiou" else kind.lower() + "s"
              for kind in SPEC_TYPES}
    assert resources == plural | {"services", "pods", "namespaces", "endpointslices"}
    granted = {(group, r) for rule in rules for group in rule["apiGroups"] for r in rule["resources"]}
    assert {(kind.group, kind.plural) for kind in KINDS} <= granted


def test_mesh_config_map_is_valid_mesh_config(tmp_path: Path):
    """The ConfigMap's files pass the control server's own validation (what --config-dir loads)."""
    data = find("ConfigMap", "remora-mesh-config")["data"]
    for key, text in data.items():
        assert key.endswith(".yaml"), f"{key}: --config-dir only reads *.yaml / *.yml"
        (tmp_path / key).write_text(text)
    docs, issues, _ = read_sources([tmp_path])
    try:
        validate_documents(docs, issues)
    except ConfigError as err:
        pytest.fail(str(err))


def test_make_cacerts_is_executable():
    """The CA helper script is shipped executable."""
    assert (DEPLOY / "make-cacerts.sh").stat().st_mode & 0o111


def test_injecting_the_control_plane_changes_nothing():
    """The control server opts out of injection: `remora inject` leaves control.yaml byte for byte."""
    from remora.kube.inject import inject_text
    text = (DEPLOY / "control.yaml").read_text()
    result = inject_text(text)
    assert result.output == text and result.injected == 0


def test_ingress_gateway_is_remora_gateway_with_istios_names_and_ports():
    """istio-ingressgateway runs `remora gateway` as istio-system/istio-ingressgateway-service-account
    with Istio's labels; each Service port reaches the container port --port-map serves it on."""
    from remora.kube.sidecar import default_token_secret
    deployment = find("Deployment", "istio-ingressgateway")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "gateway" and args.control == DEFAULT_CONTROL
    assert (args.namespace, args.service_account) == ("istio-system", pod["spec"]["serviceAccountName"])
    assert args.labels == {k: v for k, v in pod["metadata"]["labels"].items() if "." not in k}
    (token,) = [e for e in container["env"] if e["name"] == "REMORA_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["name"] == default_token_secret(args.service_account)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = find("Service", "istio-ingressgateway")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    for port in service["spec"]["ports"]:
        local = args.port_map.get(port["port"], port["port"])
        assert container_ports[port["targetPort"]] == local, port
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert args.credentials_dir in mounts and posixpath.dirname(args.state_dir) in mounts
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15021}


def test_ingress_gateway_reads_its_namespaces_secrets_and_nothing_more():
    """The gateway reads credentialName Secrets from the API: a Role of get/list/watch on secrets
    only, in its namespace, bound to its service account, whose token the pod mounts."""
    deployment = find("Deployment", "istio-ingressgateway")
    pod = deployment["spec"]["template"]["spec"]
    args = build_parser().parse_args(pod["containers"][0]["args"])
    assert args.credentials_from_kubernetes and args.kubeconfig is None and pod["automountServiceAccountToken"]
    role, binding = find("Role", "istio-ingressgateway-sds"), find("RoleBinding", "istio-ingressgateway-sds")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == args.namespace
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "istio-ingressgateway-sds"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": args.namespace}]


def test_injection_webhook_reaches_the_control_servers_webhook_listener():
    """The shipped MutatingWebhookConfiguration is remora webhook-config's (empty caBundle); its
    service and port lead to --webhook-listen, whose certificate names that Service."""
    import yaml
    from remora.kube.webhook_config import webhook_configuration
    shipped = find("MutatingWebhookConfiguration", "remora-sidecar-injector")
    assert shipped == webhook_configuration()
    client = shipped["webhooks"][0]["clientConfig"]["service"]
    service = find("Service", client["name"])
    assert service["metadata"]["namespace"] == client["namespace"]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == client["port"]]
    _, container = control_pod()
    container_port = next(p["containerPort"] for p in container["ports"] if p["name"] == port["targetPort"])
    args = build_parser().parse_args(container["args"])
    assert args.webhook_listen == f"0.0.0.0:{container_port}"
    assert f"{client['name']}.{client['namespace']}.svc" in args.webhook_names.split(",")
    assert yaml.safe_load((DEPLOY / "injection-webhook.yaml").read_text()) == shipped
