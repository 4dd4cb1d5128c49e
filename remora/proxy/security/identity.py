"""Who a sidecar is: its workload, namespace, service account, labels and node id.

The same facts serve three readers: the control server (registration and the snapshot a
sidecar gets), telemetry (Istio's source_*/destination_* labels) and, later, mTLS (the
SPIFFE ID the certificate must carry). Names follow Istio's: the canonical service is the
`app` label (falling back to --service), the canonical revision the `version` label.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

UNKNOWN = "unknown"


def parse_labels(text: str) -> dict[str, str]:
    """`app=reviews,version=v2` -> {"app": "reviews", "version": "v2"}; raises ValueError."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label {item!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


@dataclass(frozen=True)
class WorkloadIdentity:
    """The sidecar's workload as the mesh sees it."""

    service: str | None = None          # --service: the service this workload serves
    namespace: str = "default"
    service_account: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    workload: str | None = None         # --workload: like a Deployment name (reviews-v2)
    trust_domain: str = "cluster.local"
    node_id: str | None = None          # --node-id: unique per running sidecar
    locality: str = ""                  # --locality region/zone/subzone (upstream/locality.py)

    @property
    def app(self) -> str:
        return self.labels.get("app") or self.service or UNKNOWN

    @property
    def version(self) -> str:
        return self.labels.get("version") or UNKNOWN

    @property
    def workload_name(self) -> str:
        """--workload, else app-version (reviews-v2), else the app."""
        if self.workload:
            return self.workload
        if self.app == UNKNOWN:
            return UNKNOWN
        return f"{self.app}-{self.version}" if "version" in self.labels else self.app

    @property
    def principal(self) -> str:
        """The SPIFFE ID this workload's certificate carries."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def id(self) -> str:
        """--node-id, else `<workload>.<namespace>~<hostname>~<pid>` (unique per process)."""
        if self.node_id:
            return self.node_id
        return f"{self.workload_name}.{self.namespace}~{socket.gethostname()}~{os.getpid()}"
