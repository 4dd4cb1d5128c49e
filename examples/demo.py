"""`make demo`: a bookinfo-like mesh on loopback, no containers.

    python -m examples.demo [--duration SECONDS] [--base-port N] [--rate R] [--weights 50,30,20]
                            [--shift-after SECONDS]

Starts `remora control` with the mesh's services, applies the reviews routing rule to it,
then starts productpage, reviews v1/v2/v3 and ratings, each behind its own `remora proxy`
sidecar that registers itself with the control server. It waits until every sidecar is
ready and knows every peer, prints the URL to open and the `remora apply` command that
shifts reviews traffic to v3, then sends traffic to productpage and prints one line per
second with the reviews split it observes. Ctrl-C or --duration stops everything and
exits 0; a child that dies on its own makes the demo print its stderr tail and exit 1.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from examples import topology, traffic
from examples.processes import Child, Supervisor

# A sidecar drains for --drain-seconds after SIGTERM; this is how much longer we wait
# before calling it stuck and killing it.
STOP_SLACK_SECONDS = 3.0
HEADER_ROUTE_PROBES = 5
SHIFT_WEIGHTS = (0, 0, 100)   # what the printed `remora apply` command routes reviews to
# Endpoints each sidecar must know before traffic starts: every instance has registered.
EXPECTED_ENDPOINTS = {"productpage": 1, "reviews": 3, "ratings": 1}


class ChildDied(Exception):
    def __init__(self, child: Child):
        super().__init__(child.name)
        self.child = child


class StartupTimeout(Exception):
    pass


def say(*parts: object) -> None:
    print(*parts, flush=True)  # flushed: the demo is watched live, often through a pipe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, help="seconds of traffic, then stop (default: until Ctrl-C)")
    p.add_argument("--base-port", type=int,
                   help=f"use {topology.PORT_COUNT} consecutive ports from N (default: any free ports)")
    p.add_argument("--rate", type=float, default=10.0, help="requests per second to productpage (default 10)")
    p.add_argument("--weights", default="50,30,20", help="reviews v1,v2,v3 weights, summing to 100")
    p.add_argument("--drain-seconds", type=float, default=1.0, help="sidecar drain time on stop")
    p.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to wait for readiness")
    p.add_argument("--sidecar", type=shlex.split, default=topology.DEFAULT_SIDECAR,
                   help="sidecar command before its flags (default: python -m remora proxy)")
    p.add_argument("--access-log", choices=("text", "json", "off"),
                   help="sidecar access-log format (default: the sidecar's own default)")
    p.add_argument("--no-mtls", action="store_true",
                   help="start the sidecars without join tokens: no certificates, plaintext between them")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with logs on a clean exit")
    p.add_argument("--shift-after", type=float, metavar="SECONDS",
                   help="run the printed `remora apply` (reviews -> v3) after this many seconds of traffic")
    args = p.parse_args(argv)
    try:
        weights = tuple(int(w) for w in args.weights.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 3 or sum(weights) != 100 or min(weights) < 0:
        p.error("--weights takes three non-negative integers that sum to 100, e.g. 50,30,20")
    args.weights = weights
    if args.rate <= 0:
        p.error("--rate must be positive")
    return args


def check_children(sup: Supervisor) -> None:
    dead = sup.first_dead()
    if dead is not None:
        raise ChildDied(dead)


def knows_every_peer(clusters: list[dict]) -> bool:
    """A sidecar's /clusters?format=json lists every registered instance of every service."""
    found = {app: 0 for app in EXPECTED_ENDPOINTS}
    for cluster in clusters:
        app = cluster["service"].split(".", 1)[0]
        if app in found and not cluster["subset"]:
            found[app] = len(cluster["endpoints"])
    return found == EXPECTED_ENDPOINTS


async def wait_ready(sup: Supervisor, ports: dict[str, topology.Ports], stop: asyncio.Event, timeout: float) -> bool:
    """Poll every sidecar's /ready and peer list and every app's /healthz; False if stopped."""
    pending = {}
    for name, p in ports.items():
        pending[f"{name} sidecar"] = f"http://127.0.0.1:{p.admin}/ready"
        pending[f"{name} app"] = f"http://127.0.0.1:{p.app}/healthz"
        pending[f"{name} sidecar peers"] = f"http://127.0.0.1:{p.admin}/clusters?format=json"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1), trust_env=False) as s:
        while pending:
            check_children(sup)
            if time.monotonic() > deadline:
                raise StartupTimeout(", ".join(pending))
            for label, url in list(pending.items()):
                try:
                    async with s.get(url) as resp:
                        if resp.status != 200:
                            continue
                        if label.endswith("peers") and not knows_every_peer(await resp.json()):
                            continue
                        del pending[label]
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    pass  # not listening yet
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
                return False
            except asyncio.TimeoutError:
                pass
    return True


def apply_command(control_url: str, workdir: Path, path: Path) -> list[str]:
    # --state-dir: the CLI reads the local control server's admin token from it.
    return [*topology.REMORA, "apply", "-f", str(path), "--control", control_url,
            "--state-dir", str(topology.control_state_dir(workdir))]


def print_banner(ports: dict[str, topology.Ports], workdir: Path, control_url: str, shift: Path) -> str:
    pp = ports["productpage"]
    say(f"Remora demo: {len(ports)} apps, each behind its own sidecar, all on 127.0.0.1")
    say(f"  {'instance':<12} {'app':>6} {'inbound':>8} {'outbound':>9} {'admin':>6}")
    for name, p in ports.items():
        say(f"  {name:<12} {p.app:>6} {p.inbound:>8} {p.outbound:>9} {p.admin:>6}")
    say(f"  control server: {control_url}   config dir: {workdir}/config")
    status = [*topology.REMORA, "status", "--control", control_url, "--state-dir", str(topology.control_state_dir(workdir))]
    say(f"  access logs: {workdir}/<instance>.sidecar.out   sidecar status: {shlex.join(status)}")
    say(f"  admin token (for remora apply/get/status/token): {topology.control_state_dir(workdir)}/admin-token")
    url = f"http://127.0.0.1:{pp.inbound}/"
    say(f"Open {url} (productpage through its sidecar's inbound listener)")
    say(f"  API:   {url}api/productpage")
    say(f"  admin: http://127.0.0.1:{pp.admin}/clusters?format=json  http://127.0.0.1:{pp.admin}/stats")
    say(f"  mTLS:  http://127.0.0.1:{pp.admin}/certs (this sidecar's SPIFFE certificate); "
        f"connection_security_policy=\"mutual_tls\" in http://127.0.0.1:{ports['reviews-v1'].admin}/stats/prometheus")
    say(f"Shift reviews traffic to v3: {shlex.join(apply_command(control_url, workdir, shift))}")
    return f"{url}api/productpage"


async def apply_shift(control_url: str, workdir: Path, shift: Path) -> None:
    """Run the printed `remora apply` and echo what it says."""
    proc = await asyncio.create_subprocess_exec(
        *apply_command(control_url, workdir, shift), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    for line in out.decode(errors="replace").splitlines():
        say(f"  remora apply: {line}")


async def check_header_route(session: aiohttp.ClientSession, api_url: str, stop: asyncio.Event) -> None:
    """Show the VirtualService's header match at work: end-user: jason always gets v2."""
    seen = []
    for _ in range(HEADER_ROUTE_PROBES):
        if stop.is_set():
            return
        version, error = await traffic.fetch_version(session, api_url, headers={"end-user": "jason"})
        seen.append(version or "error")
        if error:
            say(f"  header route probe failed: {error}")
    verdict = "ok" if all(v == "v2" for v in seen) else "UNEXPECTED (want only v2)"
    say(f"header route  end-user: jason -> {' '.join(seen)}  {verdict}")


async def run(args: argparse.Namespace, sup: Supervisor, ports: dict[str, topology.Ports], workdir: Path,
              control_url: str, shift: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    started = time.monotonic()
    if not await wait_ready(sup, ports, stop, args.startup_timeout):
        return
    say(f"all {len(sup.children)} processes ready in {time.monotonic() - started:.1f}s")
    api_url = print_banner(ports, workdir, control_url, shift)

    stats = traffic.SplitStats()
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(timeout=traffic.REQUEST_TIMEOUT, trust_env=False, connector=connector) as session:
        await check_header_route(session, api_url, stop)
        if stop.is_set():
            return
        w = args.weights
        say(
            f"driving {args.rate:g} req/s at {api_url}; weights v1 {w[0]} / v2 {w[1]} / v3 {w[2]}; "
            + ("Ctrl-C to stop" if args.duration is None else f"stopping after {args.duration:g}s")
        )
        driver = asyncio.create_task(traffic.drive(session, api_url, args.rate, stats))
        origin, tick, error_shown = loop.time(), 0, False
        try:
            while args.duration is None or tick < args.duration:
                tick += 1
                try:
                    await asyncio.wait_for(stop.wait(), origin + tick - loop.time())
                    break  # Ctrl-C / SIGTERM
                except asyncio.TimeoutError:
                    pass
                check_children(sup)
                if driver.done():
                    driver.result()  # the driver only ends by raising: surface it
                if args.shift_after is not None and tick == int(args.shift_after):
                    await apply_shift(control_url, workdir, shift)
                stats.roll()
                say(stats.line(tick))
                if stats.first_error and not error_shown:
                    say(f"  first error: {stats.first_error}")
                    error_shown = True
        finally:
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
        say(f"total {sum(stats.total.values())} answers, {stats.errors} errors")
        say(await mesh_security_line(session, ports))


async def mesh_security_line(session: aiohttp.ClientSession, ports: dict[str, topology.Ports]) -> str:
    """How the requests between sidecars were secured, from the receiving sidecars' own Istio metrics.

    productpage is left out: its callers are the demo's driver and a browser, outside the mesh.
    """
    by_policy: dict[str, int] = {}
    for name, p in ports.items():
        if name == "productpage":
            continue
        try:
            async with session.get(f"http://127.0.0.1:{p.admin}/stats/prometheus") as resp:
                text = await resp.text()
        except aiohttp.ClientError:
            continue
        for line in text.splitlines():
            if line.startswith("istio_requests_total{") and 'reporter="destination"' in line:
                policy = line.split('connection_security_policy="', 1)[1].split('"', 1)[0]
                by_policy[policy] = by_policy.get(policy, 0) + int(float(line.rsplit(" ", 1)[1]))
    total = sum(by_policy.values())
    parts = ", ".join(f"{count} {policy}" for policy, count in sorted(by_policy.items()))
    return f"requests between sidecars: {total} ({parts or 'none seen'})"


def start_control(sup: Supervisor, workdir: Path, port: int, weights: tuple[int, int, int]) -> str:
    """Start `remora control` on the mesh's services and apply the reviews route to it."""
    config_dir = workdir / "config"
    config_dir.mkdir()
    shutil.copy(topology.MESH_CONFIG, config_dir / "mesh.yaml")
    control = Child("control", topology.control_argv(config_dir, topology.control_state_dir(workdir), port), sup.log_dir)
    sup.start(control)
    url = f"http://127.0.0.1:{port}"
    route = workdir / "reviews-route.yaml"
    route.write_text(topology.render_route(weights))
    deadline = time.monotonic() + 20
    while True:   # the control server takes a moment to listen
        check_children(sup)
        result = subprocess.run(apply_command(url, workdir, route), capture_output=True, text=True, timeout=20)
        if result.returncode == 0:
            return url
        if time.monotonic() > deadline:
            raise StartupTimeout(f"control server: remora apply failed: {result.stdout}{result.stderr}")
        time.sleep(0.2)


def start_mesh(sup: Supervisor, args: argparse.Namespace, ports: dict[str, topology.Ports],
               workdir: Path, control_url: str) -> None:
    for inst in topology.INSTANCES:
        p = ports[inst.name]
        argv = topology.sidecar_argv(args.sidecar, control_url, inst, p,
                                     workdir / f"{inst.name}.state", args.drain_seconds)
        if args.access_log == "off":
            argv += ["--access-log", "off"]
        elif args.access_log:
            argv += ["--access-log-format", args.access_log]
        # With a join token each sidecar gets its SPIFFE certificate from the control server's
        # CA and registers as mTLS-capable, so every sidecar-to-sidecar hop is mutual TLS.
        env = {} if args.no_mtls else {"REMORA_TOKEN": create_token(control_url, workdir, inst)}
        sup.start(Child(f"{inst.name}.sidecar", argv, sup.log_dir, env))
        sup.start(Child(f"{inst.name}.app", topology.app_argv(inst, p), sup.log_dir))


def create_token(control_url: str, workdir: Path, inst: topology.Instance) -> str:
    result = subprocess.run(topology.token_argv(control_url, topology.control_state_dir(workdir), inst), capture_output=True, text=True, timeout=20)
    if result.returncode != 0 or not result.stdout.strip():
        raise StartupTimeout(f"control server: remora token create failed: {result.stdout}{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def report_death(child: Child) -> None:
    code = child.returncode()
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    say(f"demo: {child.name} {how} unexpectedly; last stderr lines ({child.stderr_path}):")
    for line in child.stderr_tail() or ["(no stderr output)"]:
        say(f"  | {line}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ports, control_port = topology.assign_ports(args.base_port)
    workdir = Path(tempfile.mkdtemp(prefix="remora-demo-"))
    shift = workdir / "reviews-v3.yaml"
    shift.write_text(topology.render_route(SHIFT_WEIGHTS))
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # logs land in files as they happen
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(topology.PROJECT_ROOT), env.get("PYTHONPATH")]))
    sup = Supervisor(topology.PROJECT_ROOT, env, log_dir=workdir)
    code = 1
    try:
        control_url = start_control(sup, workdir, control_port, args.weights)
        start_mesh(sup, args, ports, workdir, control_url)
        asyncio.run(run(args, sup, ports, workdir, control_url, shift))
        code = 0
    except KeyboardInterrupt:
        code = 0  # Ctrl-C before the loop installed its handler: still a normal stop
    except ChildDied as died:
        report_death(died.child)
    except StartupTimeout as late:
        say(f"demo: not ready after {args.startup_timeout:g}s: {late}")
        for child in sup.children:
            if child.stderr_tail(1):
                say(f"  {child.name} stderr ({child.stderr_path}):")
                for line in child.stderr_tail(8):
                    say(f"  | {line}")
    finally:
        # A second Ctrl-C during shutdown must not abort it half way with a traceback;
        # shutdown is bounded by the grace period anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        killed = sup.stop_all(grace=args.drain_seconds + STOP_SLACK_SECONDS)
        say(f"stopped {len(sup.children)} processes" + (f" (killed: {', '.join(killed)})" if killed else ""))
        if code == 0 and not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"logs kept in {workdir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
