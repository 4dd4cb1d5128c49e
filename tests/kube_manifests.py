"""The shipped deploy/kubernetes manifests, loaded for tests: documents and the control container."""
from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def documents() -> list[tuple[str, dict]]:
    """(file name, object) for every document of every shipped manifest."""
    return [(path.name, doc) for path in sorted(DEPLOY.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def find(kind: str, name: str) -> dict:
    return next(doc for _, doc in documents() if doc["kind"] == kind and doc["metadata"]["name"] == name)


def control_pod() -> tuple[dict, dict]:
    """(pod spec, control container) of the remora-control Deployment."""
    spec = find("Deployment", "remora-control")["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]
