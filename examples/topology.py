"""Who runs in the demo mesh, on which loopback ports, and with which command line.

Each app instance gets four ports: its own (the app listens there), and its sidecar's
inbound, outbound and admin listeners; the control server gets one more. Only the
sidecar's inbound port is registered with the control server, so peers can reach an app
only through its sidecar.
"""
from __future__ import annotations

import socket
import string
import sys
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
PROJECT_ROOT = EXAMPLES.parent
MESH_CONFIG = EXAMPLES / "mesh.yaml"
ROUTE_TEMPLATE = EXAMPLES / "reviews-route.yaml"
NAMESPACE = "default"


@dataclass(frozen=True)
class Instance:
    """One app process plus its sidecar, named like a pod's app-version label pair."""

    name: str
    app: str  # module under examples.apps, and the service (and `app` label) it serves
    version: str = "v1"

    @property
    def app_args(self) -> tuple[str, ...]:
        return ("--version", self.version) if self.app == "reviews" else ()

    @property
    def labels(self) -> str:
        """The workload labels its sidecar registers, as `remora proxy --labels` takes them."""
        return f"app={self.app},version={self.version}"


INSTANCES = (
    Instance("productpage", "productpage"),
    Instance("reviews-v1", "reviews", "v1"),
    Instance("reviews-v2", "reviews", "v2"),
    Instance("reviews-v3", "reviews", "v3"),
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


PORT_COUNT = 4 * len(INSTANCES) + 1   # four per instance, one for the control server


def assign_ports(base_port: int | None) -> tuple[dict[str, Ports], int]:
    """Four ports per instance and the control server's: consecutive from `base_port`, or
    kernel-picked if None."""
    if base_port is None:
        pool = free_ports(PORT_COUNT)
    else:
        pool = list(range(base_port, base_port + PORT_COUNT))
        if pool[-1] > 65535:
            raise SystemExit(f"demo: --base-port {base_port} leaves no room for {PORT_COUNT} ports")
        check_free(pool)
    instances = {inst.name: Ports(*pool[4 * i : 4 * i + 4]) for i, inst in enumerate(INSTANCES)}
    return instances, pool[-1]


def render_route(weights: tuple[int, int, int]) -> str:
    """The reviews VirtualService with its `$weight_vN` placeholders filled in."""
    values = {f"weight_v{i + 1}": w for i, w in enumerate(weights)}
    # substitute (not safe_substitute): a placeholder left unfilled is a bug here, and the
    # control server's error about "$foo" would be far less clear than a KeyError naming it.
    return string.Template(ROUTE_TEMPLATE.read_text()).substitute(values)


# The sidecar command without its flags; --sidecar on the demo replaces it, e.g. to try an
# installed `remora proxy` or a build from another checkout.
DEFAULT_SIDECAR = [sys.executable, "-m", "remora", "proxy"]
REMORA = [sys.executable, "-m", "remora"]


def control_state_dir(workdir: Path) -> Path:
    """The control server's --state-dir; the client commands read its admin token there."""
    return workdir / "control-state"


def control_argv(config_dir: Path, state_dir: Path, port: int) -> list[str]:
    return [
        *REMORA, "control",
        "--config-dir", str(config_dir),
        "--state-dir", str(state_dir),
        "--listen", f"127.0.0.1:{port}",
    ]  # fmt: skip


def sidecar_argv(command: list[str], control_url: str, inst: Instance, ports: Ports,
                 state_dir: Path, drain_seconds: float) -> list[str]:
    return [
        *command,
        "--control", control_url,
        "--state-dir", str(state_dir),
        "--service", inst.app,
        "--service-account", inst.app,
        "--namespace", NAMESPACE,
        "--workload", inst.name,
        "--labels", inst.labels,
        "--outbound-port", str(ports.outbound),
        "--admin-port", str(ports.admin),
        "--inbound-port", str(ports.inbound),
        "--app-port", str(ports.app),
        "--workers", "1",
        "--drain-seconds", f"{drain_seconds:g}",
        # No :15090 or :15021 listener: five sidecars share one host (admin has /stats/prometheus
        # and /ready).
        "--prometheus-port", "0", "--health-port", "0",
    ]  # fmt: skip


def token_argv(control_url: str, control_state: Path, inst: Instance) -> list[str]:
    """`remora token create` for the instance's identity (the join token is the last line it prints);
    the admin token comes from the local control server's state dir."""
    return [*REMORA, "token", "create", "--namespace", NAMESPACE, "--service-account", inst.app,
            "--ttl", "24h", "--control", control_url, "--state-dir", str(control_state)]


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
