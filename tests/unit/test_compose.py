"""deploy/docker-compose.yml: a valid Compose file whose containers run the demo mesh as `make demo` does."""
from __future__ import annotations

import copy
import re

import pytest
import yaml

from examples import topology
from remora.cli import build_parser
from remora.kube.annotations import TrafficCapture
from remora.kube.sidecar import iptables_args
from tests.compose_check import DEFAULT_FILE, check, interpolate, load, schema_problems, structural_problems

DEPLOY = DEFAULT_FILE.parent
ROOT = DEPLOY.parent
PODS = {inst.name: inst for inst in topology.INSTANCES}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(DEFAULT_FILE, env={})


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_shipped_file_passes_schema_and_structure():
    """The shipped file has no problem, and the Compose Specification was checked too."""
    problems, with_schema = check(DEFAULT_FILE, env={})
    assert problems == []
    assert with_schema, "compose-spec (the test extra) should be installed for make test"


BROKEN = [
    ("network_mode of a missing service", lambda s: s["reviews-v1-proxy"].update(network_mode="service:reviews-v9"),
     "services.reviews-v1-proxy: depends on service 'reviews-v9', which is not defined"),
    ("depends_on a missing service", lambda s: s["ratings-app"]["depends_on"].update({"nope": {}}),
     "services.ratings-app: depends on service 'nope', which is not defined"),
    ("a cycle", lambda s: s["control"].update(depends_on={"tokens": {"condition": "service_completed_successfully"}}),
     "services: dependency cycle control -> tokens -> control"),
    ("healthy wait on a service without a check",
     lambda s: s["ratings-app"]["depends_on"].update({"tokens": {"condition": "service_healthy"}}),
     "services.ratings-app.depends_on.tokens: service_healthy, but 'tokens' has no health check"),
    ("neither image nor build", lambda s: [s["prometheus"].pop("image")],
     "services.prometheus: neither image nor build"),
    ("ports on a namespace joiner", lambda s: s["ratings-proxy"].update(ports=["15090:15090"]),
     "services.ratings-proxy: joins 'service:ratings', so ports and networks belong on that service"),
    ("a host port twice", lambda s: s["ratings"].update(ports=["127.0.0.1:9090:9080"]),
     "services.prometheus.ports: 127.0.0.1:9090/tcp is already published by 'ratings'"),
    ("a missing bind source", lambda s: s["control"]["volumes"].append("./compose/nope.yaml:/etc/nope.yaml:ro"),
     "services.control.volumes[2]: bind source './compose/nope.yaml' does not exist"),
    ("an undeclared named volume", lambda s: s["control"]["volumes"].append("scratch:/scratch"),
     "services.control.volumes[2]: named volume 'scratch' is not declared under volumes"),
    ("a missing Dockerfile", lambda s: s["control"].update(build={"context": "..", "dockerfile": "Nope"}),
     "services.control.build:"),
]


@pytest.mark.parametrize("what, breaks, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_structural_problems_are_named_by_service_and_field(compose, what, breaks, message):
    """Each broken rule is reported with the service and field at fault."""
    doc = copy.deepcopy(compose)
    breaks(doc["services"])
    problems = structural_problems(doc, DEPLOY)
    assert any(p.startswith(message) for p in problems), problems


def test_schema_errors_name_the_service(compose):
    """A key the Compose Specification does not have is reported on its service."""
    doc = copy.deepcopy(compose)
    doc["services"]["ratings"]["netwrk_mode"] = "host"
    problems = schema_problems(doc)
    assert len(problems) == 1 and problems[0].startswith("services.ratings: ") and "netwrk_mode" in problems[0]


def test_interpolation_takes_the_environment_then_the_default():
    """${VAR:-default} is the variable when set, else the default; $$ is a dollar."""
    assert interpolate("${X:-dflt}/$$Y", {}) == "dflt/$Y"
    assert interpolate({"a": ["${X:-dflt}"]}, {"X": "set"}) == {"a": ["set"]}


def test_every_demo_instance_is_a_pod_with_init_proxy_and_app(compose):
    """Each `make demo` instance has its namespace holder, init, sidecar and app, all in one namespace."""
    services = compose["services"]
    for pod in PODS:
        for part in ("init", "proxy", "app"):
            assert services[f"{pod}-{part}"]["network_mode"] == f"service:{pod}"
        assert services[f"{pod}-init"]["depends_on"][pod]["condition"] == "service_started"
        assert services[f"{pod}-proxy"]["depends_on"][f"{pod}-init"]["condition"] == "service_completed_successfully"
        assert services[f"{pod}-app"]["depends_on"][f"{pod}-proxy"]["condition"] == "service_healthy"


def test_init_runs_the_remora_iptables_contract_as_root_with_net_admin(compose):
    """The init step runs the same `remora iptables` command line that `remora inject` writes."""
    expected = iptables_args(TrafficCapture())
    for pod in PODS:
        init = compose["services"][f"{pod}-init"]
        argv = [part for arg in init["command"] for part in (arg.split("=", 1) if arg.startswith("--") else [arg])]
        assert argv == expected
        assert init["user"] == "0:0" and set(init["cap_add"]) == {"NET_ADMIN", "NET_RAW"}
        assert init["restart"] == "no"


def test_sidecar_commands_parse_and_carry_the_demo_identity(compose):
    """Every sidecar's args are a `remora proxy` command line with the demo instance's identity."""
    parser = build_parser()
    minted = compose["services"]["tokens"]["environment"]["SERVICE_ACCOUNTS"].split()
    for pod, inst in PODS.items():
        svc = compose["services"][f"{pod}-proxy"]
        args = parser.parse_args(["proxy", *svc["command"]])
        assert (args.service, args.workload, args.labels) == (inst.app, inst.name, dict(
            kv.split("=") for kv in inst.labels.split(",")))
        assert args.control == "http://control:15010"
        assert (args.inbound_port, args.app_port) == (15006, 9080)
        # Peers, Prometheus and the health check reach it; admin (quitquitquit) stays on loopback.
        assert "0.0.0.0" == args.inbound_bind == args.prometheus_bind == args.health_bind
        assert args.admin_bind == "127.0.0.1"
        assert args.capture   # the pod's init container redirects its traffic
        assert args.service_account == inst.app   # as `make demo`: the service account is the app's name
        assert svc["environment"]["SERVICE_ACCOUNT"] == args.service_account in minted
        assert svc["depends_on"]["tokens"]["condition"] == "service_completed_successfully"


def test_apps_run_the_demo_modules_on_port_9080(compose):
    """Each app container runs its examples.apps module as `make demo` does, behind its sidecar."""
    for pod, inst in PODS.items():
        svc = compose["services"][f"{pod}-app"]
        assert svc["entrypoint"] == ["python3", "-m", f"examples.apps.{inst.app}"]
        assert svc["command"] == ["--port", "9080", *inst.app_args]
        assert svc["environment"]["REMORA_OUTBOUND"] == "http://127.0.0.1:15001"


def test_control_server_serves_the_demo_mesh_and_route(compose):
    """The control server's config directory, mounted whole, holds the demo's mesh.yaml and its
    reviews route with the default weights."""
    volumes = compose["services"]["control"]["volumes"]
    assert "./compose/mesh:/etc/remora/mesh:ro" in volumes
    shipped = yaml.safe_load((DEPLOY / "compose/mesh/reviews-route.yaml").read_text())
    assert shipped == yaml.safe_load(topology.render_route((50, 30, 20)))
    copy_text = (DEPLOY / "compose/mesh/mesh.yaml").read_text()
    assert copy_text.endswith(topology.MESH_CONFIG.read_text()), "deploy/compose/mesh/mesh.yaml: copy examples/mesh.yaml"
    assert sorted(p.name for p in (DEPLOY / "compose/mesh").iterdir()) == ["gateway.yaml", "mesh.yaml",
                                                                          "reviews-route.yaml"]
    args = build_parser().parse_args(compose["services"]["control"]["command"])
    assert (args.command, args.listen, args.config_dir) == ("control", "0.0.0.0:15010", "/etc/remora/mesh")


def test_no_single_file_bind_mounts(compose):
    """Every bind mount of a config file is its directory: an edit on the host that replaces the
    file (sed -i, most editors) must reach the container; scripts read once at start are exempt."""
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", ()):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = DEPLOY / source
                if path.is_file():
                    # Scripts run once per start; Prometheus rereads its files only on restart/SIGHUP.
                    assert path.suffix == ".sh" or name == "prometheus", f"{name}: {volume} mounts one file"


def test_default_up_pulls_nothing(compose):
    """Without a profile, every service is built locally from the Remora image (pull_policy never,
    a base image made here); anything that must be pulled sits behind a profile."""
    for name, svc in compose["services"].items():
        if svc.get("profiles"):
            continue
        assert svc.get("build") and svc.get("pull_policy") == "never", f"{name} would be pulled"
        assert svc["build"]["args"]["BASE_IMAGE"] == "remora-base:bookworm"
    assert compose["services"]["prometheus"]["profiles"] == ["monitoring"]


def test_prometheus_scrapes_every_sidecar_on_15090(compose):
    """Prometheus's sidecar job lists each pod on 15090 at /stats/prometheus, and loads the shipped alerts."""
    config = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "remora-sidecars")
    assert job["metrics_path"] == "/stats/prometheus"
    assert sorted(job["static_configs"][0]["targets"]) == sorted(f"{pod}:15090" for pod in PODS)
    assert "./prometheus/alerts.yaml:/etc/prometheus/alerts.yaml:ro" in compose["services"]["prometheus"]["volumes"]


def test_dockerfile_contract():
    """The image: BASE_IMAGE arg in both stages, uid 1337, health check on 15021, entrypoint remora, Istio's ports."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\} AS \w+$", text, re.M)) == 2
    assert re.search(r"^USER 1337:1337$", text, re.M)
    assert "/healthz/ready" in text and "'15021'" in text
    assert re.search(r'^ENTRYPOINT \["remora"\]$', text, re.M)
    exposed = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())
    assert exposed == {"15001", "15006", "15000", "15090", "15021"}


def test_dockerignore_keeps_the_build_context_to_the_package():
    """The build context is the package and its metadata: no venv, tests or git history."""
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!remora"} <= set(lines)


def test_token_minting_reads_the_admin_token_the_control_server_creates(compose):
    """`tokens` mounts control's state volume read-only and its ADMIN_TOKEN_FILE is <--state-dir>/admin-token."""
    control, tokens = compose["services"]["control"], compose["services"]["tokens"]
    state_dir = build_parser().parse_args(control["command"]).state_dir
    state_mount = next(v for v in control["volumes"] if v.startswith("control-state:"))
    assert f"{state_mount}:ro" in tokens["volumes"]
    assert state_dir.startswith(state_mount.split(":")[1] + "/")
    assert tokens["environment"]["ADMIN_TOKEN_FILE"] == f"{state_dir}/admin-token"
    assert '--admin-token-file "$ADMIN_TOKEN_FILE"' in (DEPLOY / "compose/mint-tokens.sh").read_text()


def test_ingress_gateway_serves_the_bookinfo_gateway_as_istio_ingressgateway(compose):
    """The istio-ingressgateway service runs `remora gateway` with the ingress gateway's identity
    and token, and the shipped Gateway selects it and routes /api/productpage to productpage."""
    from remora.config.loader import load_mesh_config
    from remora.proxy.router.gateway_routes import gateway_ports
    svc = compose["services"]["istio-ingressgateway"]
    assert svc["environment"]["REMORA_COMMAND"] == "gateway"
    args = build_parser().parse_args(["gateway", *svc["command"]])
    assert (args.namespace, args.service_account) == ("istio-system", "istio-ingressgateway-service-account")
    assert args.port_map == {80: 8080} and args.control == "http://control:15010"
    assert "0.0.0.0" == args.bind == args.prometheus_bind == args.health_bind
    minted = compose["services"]["tokens"]["environment"]["SERVICE_ACCOUNTS"].split()
    assert f"{args.namespace}/{svc['environment']['SERVICE_ACCOUNT']}" in minted
    assert svc["ports"] == ["127.0.0.1:8080:8080"]
    config = load_mesh_config([DEPLOY / "compose/mesh"])
    ports, warnings = gateway_ports(config, args.labels)
    assert list(ports) == [80] and not warnings
    (vs,) = [vs for vs in config.virtual_services if vs.spec.gateways == ["bookinfo-gateway"]]
    assert vs.spec.http[0].route[0].destination.host == "productpage"
    prometheus = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "remora-gateways")
    assert job["static_configs"][0]["targets"] == ["istio-ingressgateway:15090"]
