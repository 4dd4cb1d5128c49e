"""The containers and volume `remora inject` adds to a pod: what they run and with which rights.

- `remora-init` runs `remora iptables` as root with NET_ADMIN/NET_RAW only, once, before
  everything else: it sets the pod's nat rules and exits.
- `remora-proxy` is a Kubernetes native sidecar (an init container with
  `restartPolicy: Always`, Kubernetes >= 1.29): it starts before the app's containers and
  its startupProbe holds them back until it is ready; it does not keep a Job from
  completing. It runs as uid/gid 1337, the identity `remora iptables` exempts from capture.

Only flags that `remora proxy` has are emitted. Admin (15000, which can quit the proxy)
stays on loopback; the Prometheus port 15090 and the health port 15021 are bound on
0.0.0.0, because Prometheus and kubelet's probes reach the pod from outside it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from remora.kube.annotations import TrafficCapture

PROXY_NAME = "remora-proxy"
INIT_NAME = "remora-init"
STATE_VOLUME = "remora-state"
STATE_DIR = "/var/run/remora"

DEFAULT_IMAGE = "remora:latest"
DEFAULT_CONTROL = "http://remora-control.remora-system.svc:15010"

PROXY_UID = 1337
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
HEALTH_PORT = 15021
PROMETHEUS_PORT = 15090


@dataclass(frozen=True)
class SidecarSettings:
    """Flags of `remora inject`: the same for every workload of one run."""

    image: str = DEFAULT_IMAGE
    control: str = DEFAULT_CONTROL


@dataclass(frozen=True)
class PodIdentity:
    """What one pod template says about the workload the sidecar serves."""

    service: str
    workload: str
    service_account: str
    labels: dict[str, str] = field(default_factory=dict)
    app_port: int | None = None
    token_secret: str = ""


def proxy_args(settings: SidecarSettings, pod: PodIdentity) -> list[str]:
    """`remora proxy ...` for this pod; the namespace comes from the downward API at run time."""
    args = ["proxy", "--control", settings.control]
    if pod.app_port is not None:
        args += ["--inbound-port", str(INBOUND_PORT), "--app-port", str(pod.app_port)]
    args += ["--service", pod.service, "--workload", pod.workload,
             "--namespace", "$(POD_NAMESPACE)", "--service-account", pod.service_account]
    if pod.labels:
        args += ["--labels", ",".join(f"{k}={v}" for k, v in pod.labels.items())]
    args += ["--state-dir", STATE_DIR, "--bind", "0.0.0.0", "--inbound-bind", "0.0.0.0",
             "--prometheus-bind", "0.0.0.0", "--health-bind", "0.0.0.0",
             "--capture"]   # the remora-init container redirects the pod's traffic to 15001/15006
    return args


def iptables_args(capture: TrafficCapture) -> list[str]:
    """`remora iptables ...`: the contract written in docs/kubernetes.md ("" means none)."""
    return ["iptables",
            "--outbound-capture-port", str(OUTBOUND_PORT),
            "--inbound-capture-port", str(INBOUND_PORT),
            "--proxy-uid", str(PROXY_UID), "--proxy-gid", str(PROXY_UID),
            "--include-outbound-cidrs", capture.include_outbound_cidrs,
            "--exclude-outbound-cidrs", capture.exclude_outbound_cidrs,
            "--include-inbound-ports", capture.include_inbound_ports,
            "--exclude-inbound-ports", capture.exclude_inbound_ports,
            "--exclude-outbound-ports", capture.exclude_outbound_ports]


def init_container(settings: SidecarSettings, capture: TrafficCapture) -> dict:
    """The `remora-init` container: root with the two network capabilities, nothing else."""
    return {
        "name": INIT_NAME,
        "image": settings.image,
        "args": iptables_args(capture),
        "resources": {"requests": {"cpu": "10m", "memory": "40Mi"},
                      "limits": {"cpu": "100m", "memory": "64Mi"}},
        "securityContext": {
            "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
            "privileged": False, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


def _ready_probe(**timing: int) -> dict:
    return {"httpGet": {"path": "/healthz/ready", "port": HEALTH_PORT}, **timing}


def proxy_container(settings: SidecarSettings, pod: PodIdentity) -> dict:
    """The `remora-proxy` native sidecar."""
    return {
        "name": PROXY_NAME,
        "image": settings.image,
        "restartPolicy": "Always",
        "args": proxy_args(settings, pod),
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "REMORA_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": pod.token_secret, "key": "token"}}},
        ],
        "ports": [{"name": "http-envoy-prom", "containerPort": PROMETHEUS_PORT, "protocol": "TCP"}],
        # Like Istio's native sidecar: the startup probe holds the app containers back until
        # the sidecar has config and certificates; readiness keeps reporting afterwards.
        "startupProbe": _ready_probe(periodSeconds=1, timeoutSeconds=3, failureThreshold=600),
        "readinessProbe": _ready_probe(periodSeconds=15, timeoutSeconds=3, failureThreshold=4),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": {
            "runAsUser": PROXY_UID, "runAsGroup": PROXY_UID, "runAsNonRoot": True,
            "privileged": False, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": STATE_VOLUME, "mountPath": STATE_DIR}],
    }


def state_volume() -> dict:
    """Where the sidecar keeps its last good config: survives a sidecar restart, not the pod."""
    return {"name": STATE_VOLUME, "emptyDir": {}}


def default_token_secret(service_account: str) -> str:
    """The Secret name a pod running as `service_account` reads its join token from."""
    return f"remora-token-{service_account}"
