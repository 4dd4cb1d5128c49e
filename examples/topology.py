"""Who runs in the demo mesh, on which loopback ports, and with which command line.

Each app instance gets four ports: its own (the app listens there), and its sidecar's
inbound, outbound and admin listeners. Only the sidecar's inbound port is published in the
mesh config, so peers can reach an app only through its sidecar.
"""
from __future__ import annotations

import socket
import string
import sys
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
PROJECT_ROOT = EXAMPLES.parent
MESH_TEMPLATE = EXAMPLES / "mesh.yaml"


@dataclass(frozen=True)
class Instance:
    """One app process plus its sidecar, named like a pod's app-version label pair."""

    name: str
    app: str  # module under examples.apps
    app_args: tuple[str, ...] = ()

    @property
    def version(self) -> str:
        """The `version` label: the app's --version argument, v1 when it has none."""
        args = self.app_args
        return args[args.index("--version") + 1] if "--version" in args else "v1"

    @property
    def key(self) -> str:
        """The name as it appears in mesh.yaml placeholders (`reviews_v2_inbound`)."""
        return self.name.replace("-", "_")


INSTANCES = (
    Instance("productpage", "productpage"),
    Instance("reviews-v1", "reviews", ("--version", "v1")),
    Instance("reviews-v2", "reviews", ("--version", "v2")),
    Instance("reviews-v3", "reviews", ("--version", "v3")),
    Instance("ratings", "ratings"),
)


@dataclass(frozen=True)
class Ports:
    app: int
    inbound: int
    outbound: int
    admin: int


def free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free loopback ports.

    All sockets stay open until every port is picked so the kernel cannot hand out the same
    port twice; the window between closing them and the children binding is small enough
    for a demo.
    """
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def check_free(ports: list[int]) -> None:
    """Fail early, naming the port, when a --base-port range is already in use."""
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as exc:
                raise SystemExit(f"demo: port {port} is not free ({exc.strerror}); pick another --base-port")


def assign_ports(base_port: int | None) -> dict[str, Ports]:
    """Four ports per instance: consecutive from `base_port`, or kernel-picked if None."""
    count = 4 * len(INSTANCES)
    if base_port is None:
        pool = free_ports(count)
    else:
        pool = list(range(base_port, base_port + count))
        if pool[-1] > 65535:
            raise SystemExit(f"demo: --base-port {base_port} leaves no room for {count} ports")
        check_free(pool)
    return {inst.name: Ports(*pool[4 * i : 4 * i + 4]) for i, inst in enumerate(INSTANCES)}


def render_mesh(ports: dict[str, Ports], weights: tuple[int, int, int]) -> str:
    """mesh.yaml with every `$<instance>_inbound` and `$weight_vN` filled in."""
    values = {f"{inst.key}_inbound": ports[inst.name].inbound for inst in INSTANCES}
    values.update({f"weight_v{i + 1}": w for i, w in enumerate(weights)})
    # substitute (not safe_substitute): a placeholder left unfilled is a bug here, and the
    # sidecar's error about "$foo" would be far less clear than a KeyError naming it.
    return string.Template(MESH_TEMPLATE.read_text()).substitute(values)


# The sidecar command without its flags; --sidecar on the demo replaces it, e.g. to try an
# installed `remora proxy` or a build from another checkout.
DEFAULT_SIDECAR = [sys.executable, "-m", "remora", "proxy"]


def sidecar_argv(command: list[str], mesh_file: Path, ports: Ports, drain_seconds: float,
                 inst: Instance | None = None) -> list[str]:
    # Identity flags label the Istio metrics (source_app, destination_version, ...); no
    # :15090 listener, since five sidecars share one host (admin /stats/prometheus has it all).
    identity = ([] if inst is None else
                ["--service", inst.app, "--workload", inst.name,
                 "--labels", f"app={inst.app},version={inst.version}"])
    return [
        *command,
        "--mesh-config", str(mesh_file),
        "--outbound-port", str(ports.outbound),
        "--admin-port", str(ports.admin),
        "--inbound-port", str(ports.inbound),
        "--app-port", str(ports.app),
        "--workers", "1",
        "--drain-seconds", f"{drain_seconds:g}",
        "--prometheus-port", "0",
        *identity,
    ]  # fmt: skip


def app_argv(inst: Instance, ports: Ports) -> list[str]:
    return [
        sys.executable, "-m", f"examples.apps.{inst.app}",
        "--port", str(ports.app),
        "--outbound", outbound_url(ports),
        *inst.app_args,
    ]  # fmt: skip


def outbound_url(ports: Ports) -> str:
    """The sidecar's outbound listener as the proxy URL the app hands to aiohttp."""
    return f"http://127.0.0.1:{ports.outbound}"
