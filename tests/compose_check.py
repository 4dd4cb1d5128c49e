"""Check a docker-compose file without Docker or a registry: `make compose-check` and a unit test.

    python -m tests.compose_check [deploy/docker-compose.yml]

Two layers, every problem named by file and path (`services.reviews-v1-proxy.depends_on`):
- the Compose Specification, with the `compose-spec` package (Python bindings of the Rust
  compose_spec parser: unknown keys, wrong types, bad ports and conditions), when it is
  installed (the `test` extra has it);
- what a schema cannot see, always: `network_mode: service:X`, `depends_on` and `volumes_from`
  name services that exist; no dependency cycle (joining a service's network namespace
  depends on it too); a service joining another's namespace publishes no ports of its own;
  `service_healthy` waits only on a service with a health check; each service has an image
  or a build whose context and Dockerfile exist; bind-mount sources exist; named volumes
  are declared; published host ports and container names are unique.

`${VAR}` / `${VAR:-default}` are interpolated from the environment as Compose does.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import yaml

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "deploy" / "docker-compose.yml"
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution on every string of a loaded document."""
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1) or m.group(3)
            return env.get(name) or (m.group(2) or "")
        return _VARIABLE.sub(sub, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load(path: Path, env: dict[str, str] | None = None) -> dict:
    """The file as Compose sees it: YAML (anchors and `<<` merges resolved), interpolated."""
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return interpolate(doc, dict(os.environ) if env is None else env)


def _dependencies(service: dict) -> dict[str, str]:
    """name -> condition of every service this one waits for (depends_on, network_mode, volumes_from)."""
    deps = service.get("depends_on") or {}
    found = {name: "service_started" for name in deps} if isinstance(deps, list) else \
        {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}
    mode = service.get("network_mode", "")
    if isinstance(mode, str) and mode.startswith("service:"):
        found.setdefault(mode.split(":", 1)[1], "service_started")
    for source in service.get("volumes_from") or []:
        if not source.startswith("container:"):
            found.setdefault(source.split(":", 1)[0], "service_started")
    return found


def _has_healthcheck(service: dict, base: Path) -> bool:
    check = service.get("healthcheck")
    if isinstance(check, dict) and (check.get("disable") or check.get("test") in (["NONE"], "NONE")):
        return False
    if check:
        return True
    dockerfile = _dockerfile(service, base)   # no healthcheck key: the image's HEALTHCHECK, if we can see it
    return dockerfile is not None and dockerfile.is_file() and \
        re.search(r"^\s*HEALTHCHECK\s+(?!NONE)", dockerfile.read_text(), re.M) is not None


def _dockerfile(service: dict, base: Path) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = base / build.get("context", ".")
    return context / build.get("dockerfile", "Dockerfile")


def _cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One dependency cycle as a list of names (first == last), or None."""
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        for dep in graph.get(node, {}):
            if dep in trail:
                return trail[trail.index(dep):] + [dep]
            if dep in graph and dep not in done:
                found = visit(dep, trail + [dep])
                if found:
                    return found
        done.add(node)
        return None

    for name in graph:
        found = None if name in done else visit(name, [name])
        if found:
            return found
    return None


def _host_ports(service: dict) -> list[str]:
    """Published host endpoints as 'ip:port/proto' (short and long syntax)."""
    published = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                published.append(f"{port.get('host_ip', '0.0.0.0')}:{port['published']}/{port.get('protocol', 'tcp')}")
            continue
        text, _, proto = str(port).partition("/")
        parts = text.rsplit(":", 2)
        if len(parts) >= 2:
            ip = parts[0] if len(parts) == 3 else "0.0.0.0"
            published.append(f"{ip}:{parts[-2]}/{proto or 'tcp'}")
    return published


def structural_problems(doc: dict, base: Path) -> list[str]:
    """What the schema cannot check; `base` is the compose file's directory."""
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        return ["services: expected at least one service"]
    problems: list[str] = []
    declared_volumes = set(doc.get("volumes") or {})
    graph = {name: _dependencies(svc or {}) for name, svc in services.items()}
    ports: dict[str, str] = {}
    containers: dict[str, str] = {}
    for name, svc in services.items():
        at = f"services.{name}"
        svc = svc or {}
        if "image" not in svc and "build" not in svc:
            problems.append(f"{at}: neither image nor build")
        dockerfile = _dockerfile(svc, base)
        if dockerfile is not None and not dockerfile.is_file():
            problems.append(f"{at}.build: {dockerfile} does not exist")
        for dep, condition in graph[name].items():
            if dep not in services:
                problems.append(f"{at}: depends on service {dep!r}, which is not defined")
            elif condition == "service_healthy" and not _has_healthcheck(services[dep] or {}, base):
                problems.append(f"{at}.depends_on.{dep}: service_healthy, but {dep!r} has no health check")
        mode = svc.get("network_mode", "")
        if isinstance(mode, str) and mode.startswith("service:") and (svc.get("ports") or svc.get("networks")):
            problems.append(f"{at}: joins {mode!r}, so ports and networks belong on that service")
        for i, volume in enumerate(svc.get("volumes") or []):
            if isinstance(volume, dict):
                source, bind = volume.get("source"), volume.get("type") == "bind"
            else:
                source, sep, _ = str(volume).partition(":")
                source, bind = (source if sep else None), source.startswith((".", "/", "~"))
            if not source:
                continue   # an anonymous volume
            if bind:
                if not (base / os.path.expanduser(source)).exists():
                    problems.append(f"{at}.volumes[{i}]: bind source {source!r} does not exist")
            elif source not in declared_volumes:
                problems.append(f"{at}.volumes[{i}]: named volume {source!r} is not declared under volumes")
        for endpoint in _host_ports(svc):
            if endpoint in ports:
                problems.append(f"{at}.ports: {endpoint} is already published by {ports[endpoint]!r}")
            ports[endpoint] = name
        if "container_name" in svc:
            if svc["container_name"] in containers:
                problems.append(f"{at}.container_name: {svc['container_name']!r} is also {containers[svc['container_name']]!r}'s")
            containers[svc["container_name"]] = name
    cycle = _cycle(graph)
    if cycle:
        problems.append(f"services: dependency cycle {' -> '.join(cycle)}")
    return problems


def schema_problems(doc: dict) -> list[str] | None:
    """Compose Specification errors, narrowed to the service at fault; None without compose-spec."""
    try:
        from compose_spec import PyCompose
    except ImportError:
        return None

    def error(d: dict) -> str | None:
        try:
            PyCompose.from_json(json.dumps(d))
        except ValueError as exc:
            return re.sub(r" at line \d+ column \d+$", "", str(exc))
        return None

    whole = error(doc)
    if whole is None:
        return []
    rest = {k: v for k, v in doc.items() if k != "services"}
    found = []
    for name, svc in (doc.get("services") or {}).items():
        message = error({**rest, "services": {name: svc}})
        if message:
            found.append(f"services.{name}: {message}")
    return found or [f"(top level): {whole}"]


def check(path: Path, env: dict[str, str] | None = None) -> tuple[list[str], bool]:
    """(problems, whether the schema was checked) for the compose file at `path`."""
    try:
        doc = load(path, env)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        return [str(exc)], False
    schema = schema_problems(doc)
    return (schema or []) + structural_problems(doc, path.parent), schema is not None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_FILE
    problems, with_schema = check(path)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        return 1
    note = "Compose Specification and structure" if with_schema else \
        "structure only (pip install compose-spec for the Compose Specification)"
    print(f"{path}: valid ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
