"""The scenarios `python -m benchmarks` runs: their topology, YAML and both data planes.

Each scenario is a `prepare` function for `runner.run_scenario`: it writes the scenario's
Istio YAML (the one source both data planes are built from), and returns, per proxy, a
function that builds the DataPlane (Remora command lines; Envoy bootstraps rendered from
the same YAML and validated).

- http1-1hop: wrk -> proxy (outbound) -> upstream.
- mesh-2hop-mtls: wrk -> sidecar A (outbound) -> mTLS -> sidecar B (inbound, STRICT) ->
  upstream, the certificates issued in-process by Remora's CA and shared by both planes.
- mesh-2hop-plain: the same without TLS, the baseline for what mTLS costs.
"""
from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Callable

from benchmarks.certs import issue_cert_dirs
from benchmarks.envoy_config import render_bootstrap, render_inbound_bootstrap
from benchmarks.mesh import (CLIENT_ACCOUNT, MESH_NAMESPACE, SERVER_ACCOUNT, SERVER_HOST,
                             SERVER_LABELS, UPSTREAM_HOST, load_documents, one_hop_yaml,
                             two_hop_yaml)
from benchmarks.procs import Child, ProcessFailed, free_port, http_get
from benchmarks.report import Goal
from benchmarks.runner import (DataPlane, Options, Prepare, Sidecar, envoy_sidecar, remora_cmd,
                               run_scenario)

Builders = dict[str, Callable[[], DataPlane]]


# ---- http1-1hop ------------------------------------------------------------------------

def prepare_one_hop(yaml_for: Callable[[int], str]) -> Prepare:
    """A `prepare` for one proxy routing Host `upstream` by the YAML yaml_for(upstream port)."""
    def prepare(workdir: Path, upstream_port: int, opts: Options) -> Builders:
        return _one_hop_planes(workdir, yaml_for(upstream_port), opts)
    return prepare


def _one_hop_planes(workdir: Path, mesh_text: str, opts: Options) -> Builders:
    mesh_file = workdir / "mesh.yaml"
    mesh_file.write_text(mesh_text)

    def remora() -> DataPlane:
        port, admin = free_port(), free_port()
        cmd = remora_cmd("--mesh-config", str(mesh_file), "--outbound-port", str(port),
                         "--admin-port", str(admin), workers=opts.workers, python=opts.python)
        return DataPlane("remora", [Sidecar("proxy", cmd, admin)], port, UPSTREAM_HOST)

    def envoy() -> DataPlane:
        port, admin = free_port(), free_port()
        bootstrap = render_bootstrap(load_documents(mesh_text), port, admin)
        sidecar = envoy_sidecar(opts.envoy, "proxy", bootstrap, workdir / "envoy.yaml", admin, opts.workers)
        return DataPlane("envoy", [sidecar], port, UPSTREAM_HOST)

    return {"remora": remora, "envoy": envoy}


def run_http1_1hop(opts: Options) -> dict:
    """wrk (keep-alive) -> one-worker proxy -> upstream, Remora vs Envoy on one Istio route."""
    return run_scenario(
        "http1-1hop",
        "wrk, keep-alive -> proxy (1 worker) -> upstream; Host: upstream; "
        "VirtualService with retries + timeout, DestinationRule outlier detection",
        prepare_one_hop(one_hop_yaml), opts,
        goals=(Goal("requests/s >= 1.5x Envoy's", "rps", ">=", 1.5),))


# ---- mesh-2hop-mtls ----------------------------------------------------------------------

def _handshakes(admin_port: int) -> dict[str, int]:
    """The `*ssl.handshake` counters on a sidecar's admin /stats (Envoy's names, both proxies)."""
    status, body = http_get(admin_port, "/stats?format=json", timeout=5.0)
    if status != 200:
        raise ProcessFailed(f"GET 127.0.0.1:{admin_port}/stats answered HTTP {status}")
    stats = json.loads(body).get("stats", [])
    return {s["name"]: int(s["value"]) for s in stats
            if "value" in s and s["name"].endswith("ssl.handshake")}


def _plaintext_refused(port: int) -> bool:
    """True when a plaintext request to a STRICT inbound port gets no HTTP answer."""
    try:
        http_get(port, "/", host=SERVER_HOST, timeout=5.0)
    except (OSError, http.client.HTTPException):
        return True
    return False


def verify_mtls(inbound_port: int) -> Callable[[DataPlane, list[Child]], None]:
    """A check that both hops of a 2-hop data plane really did mutual TLS (fails loudly if not):
    every sidecar counted a TLS handshake, and B's inbound port refuses plaintext (STRICT)."""
    def verify(plane: DataPlane, children: list[Child]) -> None:
        for sidecar, child in zip(plane.sidecars, children):
            try:
                counted = _handshakes(sidecar.admin_port)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise child.fail(f"cannot read /stats to check mTLS: {exc!r}") from exc
            if sum(counted.values()) == 0:
                raise child.fail("no TLS handshake counted after a request went through: this "
                                 f"hop ran in plaintext (ssl.handshake stats: {counted or 'none'})")
        if not _plaintext_refused(inbound_port):
            raise children[-1].fail(f"plaintext to the inbound port {inbound_port} was answered: "
                                    "PeerAuthentication STRICT is not enforced")
    return verify


def prepare_mesh_2hop_mtls(workdir: Path, upstream_port: int, opts: Options,
                           mtls: bool = True, check_mtls: bool | None = None,
                           grpc: bool = False) -> Builders:
    """Certificates for sa/client and sa/server, the 2-hop YAML, and both planes' sidecars.

    Both planes use the same ports (they never run at the same time): A's outbound port, and
    B's inbound port, which the YAML names as the service's endpoint. mtls=False turns TLS
    off in the YAML (mesh-2hop-plain, profiling); the mTLS check follows `mtls` unless
    check_mtls says otherwise (a test checks the check). grpc=True: the service port is GRPC,
    so both hops and the app speak HTTP/2 (grpc-2hop-mtls).
    """
    certs = issue_cert_dirs(workdir, MESH_NAMESPACE, [CLIENT_ACCOUNT, SERVER_ACCOUNT])
    entry_port, inbound_port = free_port(), free_port()
    mesh_text = two_hop_yaml(inbound_port, mtls, grpc)
    mesh_file = workdir / "mesh.yaml"
    mesh_file.write_text(mesh_text)
    verify = verify_mtls(inbound_port) if (mtls if check_mtls is None else check_mtls) else None

    def remora() -> DataPlane:
        admin_a, admin_b, unused_b = free_port(), free_port(), free_port()
        client = remora_cmd(
            "--mesh-config", str(mesh_file), "--cert-dir", str(certs[CLIENT_ACCOUNT]),
            "--outbound-port", str(entry_port), "--admin-port", str(admin_a),
            "--namespace", MESH_NAMESPACE, "--service-account", CLIENT_ACCOUNT,
            workers=opts.workers, python=opts.python)
        server = remora_cmd(
            "--mesh-config", str(mesh_file), "--cert-dir", str(certs[SERVER_ACCOUNT]),
            "--inbound-port", str(inbound_port), "--app-port", str(upstream_port),
            "--outbound-port", str(unused_b), "--admin-port", str(admin_b),
            "--service", "server", "--namespace", MESH_NAMESPACE,
            "--service-account", SERVER_ACCOUNT,
            "--labels", ",".join(f"{k}={v}" for k, v in SERVER_LABELS.items()),
            workers=opts.workers, python=opts.python)
        return DataPlane("remora", [Sidecar("client", client, admin_a),
                                    Sidecar("server", server, admin_b)],
                         entry_port, SERVER_HOST, verify)

    def envoy() -> DataPlane:
        admin_a, admin_b = free_port(), free_port()
        docs = load_documents(mesh_text)
        client = render_bootstrap(docs, entry_port, admin_a, certs[CLIENT_ACCOUNT])
        server = render_inbound_bootstrap(
            docs, namespace=MESH_NAMESPACE, labels=SERVER_LABELS, inbound_port=inbound_port,
            app_port=upstream_port, admin_port=admin_b, cert_dir=certs[SERVER_ACCOUNT],
            app_protocol="GRPC" if grpc else "HTTP")
        return DataPlane("envoy", [
            envoy_sidecar(opts.envoy, "client", client, workdir / "envoy-client.yaml", admin_a, opts.workers),
            envoy_sidecar(opts.envoy, "server", server, workdir / "envoy-server.yaml", admin_b, opts.workers),
        ], entry_port, SERVER_HOST, verify)

    def relay() -> DataPlane:
        admin_a, admin_b = free_port(), free_port()
        tls = ["--cert-dir"] if mtls else []
        client = relay_cmd(opts.python, "--listen", str(entry_port), "--to", f"127.0.0.1:{inbound_port}",
                           "--admin-port", str(admin_a),
                           *([*tls, str(certs[CLIENT_ACCOUNT]), "--dial-tls"] if mtls else []))
        server = relay_cmd(opts.python, "--listen", str(inbound_port), "--to", f"127.0.0.1:{upstream_port}",
                           "--admin-port", str(admin_b),
                           *([*tls, str(certs[SERVER_ACCOUNT]), "--accept-tls"] if mtls else []))
        check = verify_plaintext_refused(inbound_port) if mtls else None
        return DataPlane("relay", [Sidecar("client", client, admin_a), Sidecar("server", server, admin_b)],
                         entry_port, SERVER_HOST, check)

    return {"remora": remora, "envoy": envoy, "relay": relay}


def relay_cmd(python: str, *flags: str) -> list[str]:
    """The bare byte relay (benchmarks/tls_relay.py), on the sidecars' interpreter: the floor
    under any Python sidecar."""
    return [python, "-m", "benchmarks.tls_relay", *flags]


def verify_plaintext_refused(inbound_port: int) -> Callable[[DataPlane, list[Child]], None]:
    """The relay pair's mTLS check: B's port refuses plaintext (it has no stats to count)."""
    def verify(plane: DataPlane, children: list[Child]) -> None:
        if not _plaintext_refused(inbound_port):
            raise children[-1].fail(f"plaintext to the relay's port {inbound_port} was answered")
    return verify


def oversubscription_note(opts: Options, tool: str = "wrk") -> str:
    """Where the 2-hop processes run, and why that bounds what one proxy can do; `tool` is the
    load generator's name."""
    pin = opts.pinning
    if pin.proxy_cpus is None:
        return (f"unpinned: both sidecars, {tool} and the upstream share every core, so the "
                "numbers depend on the scheduler as much as on the proxies.")
    return (f"both sidecars share core {pin.proxy_cpus} and {tool} + the upstream share core "
            f"{pin.load_cpus} (two proxies + {tool} + upstream on 2 cores: oversubscribed): the "
            "two sidecars split one core between them, so every request pays for both "
            "proxies' work on that one core.")


def run_mesh_2hop_mtls(opts: Options) -> dict:
    """wrk -> sidecar A -> mTLS -> sidecar B -> upstream, Remora pair vs Envoy pair."""
    return run_scenario(
        "mesh-2hop-mtls",
        f"wrk, keep-alive -> sidecar A (outbound, 1 worker) -> mTLS (ISTIO_MUTUAL, secure "
        f"naming) -> sidecar B (inbound, PeerAuthentication STRICT, 1 worker) -> upstream; "
        f"Host: {SERVER_HOST}; CPU and RSS are both sidecars summed",
        prepare_mesh_2hop_mtls, opts, note=oversubscription_note(opts),
        goals=(Goal("requests/s >= 1.2x Envoy's", "rps", ">=", 1.2),))


def run_mesh_2hop_plain(opts: Options) -> dict:
    """The same two hops without TLS: the baseline that shows what mTLS costs each proxy."""
    return run_scenario(
        "mesh-2hop-plain",
        f"as mesh-2hop-mtls with DestinationRule tls DISABLE and PeerAuthentication DISABLE "
        f"(plaintext between the sidecars); Host: {SERVER_HOST}; CPU and RSS both sidecars",
        lambda workdir, port, o: prepare_mesh_2hop_mtls(workdir, port, o, mtls=False), opts,
        note=oversubscription_note(opts))


SCENARIOS = {"http1-1hop": run_http1_1hop, "mesh-2hop-mtls": run_mesh_2hop_mtls,
             "mesh-2hop-plain": run_mesh_2hop_plain}
