"""The package layers of docs/architecture.md ("Layers"), enforced by reading every import of remora/."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import remora

ROOT = Path(remora.__file__).resolve().parent

# package -> (packages it must not import, why). Packages are remora's first-level folders
# and modules ("remora.cli"); a rule on "remora.proxy.codec.http1" applies to that module only.
FORBIDDEN: dict[str, tuple[tuple[str, ...], str]] = {
    "remora.config": (("remora.certs", "remora.wire", "remora.proxy", "remora.intercept", "remora.xds",
                       "remora.kube", "remora.cli"), "config is the bottom layer: the typed model only"),
    "remora.certs": (("remora.config", "remora.wire", "remora.proxy", "remora.intercept", "remora.xds",
                      "remora.kube", "remora.cli"), "certs is a bottom layer: CA, CSR, SPIFFE rules only"),
    "remora.proxy": (("remora.xds", "remora.intercept", "remora.kube", "remora.cli"),
                     "the sidecar reaches the control server through remora.wire and capture "
                     "through proxy/process/capture_seam.py"),
    "remora.intercept": (("remora.xds", "remora.kube", "remora.cli"),
                         "capture builds on the data plane only"),
    "remora.xds": (("remora.proxy", "remora.intercept", "remora.kube", "remora.cli"),
                   "the control server shares config, certs and wire with the sidecar, no sidecar code; "
                   "Istio rules both use belong in remora.config"),
    "remora.kube": (("remora.proxy", "remora.intercept", "remora.xds", "remora.cli"),
                    "injection edits manifests; the API registry reaches the control server only as the "
                    "DocumentSource the command line hands in (xds/external.py)"),
    # role folders of the data plane (docs/architecture.md, Layout)
    "remora.proxy.codec": (("remora.proxy.upstream", "remora.proxy.admin", "remora.proxy.process",
                            "remora.proxy.control", "remora.proxy.router.exchange",
                            "remora.proxy.router.upstream_events"),
                           "a codec turns bytes into streams: it knows the router only through "
                           "codec/seams.py, and nothing of pools, admin or the process"),
    "remora.proxy.upstream": (("remora.proxy.codec.downstream", "remora.proxy.codec.http2",
                               "remora.proxy.router.exchange", "remora.proxy.admin",
                               "remora.proxy.process", "remora.proxy.control", "remora.proxy.security"),
                              "attempts, pools and connections report through upstream/seams.py"),
    "remora.proxy.security": (("remora.proxy.codec", "remora.proxy.router", "remora.proxy.upstream",
                               "remora.proxy.admin", "remora.proxy.process", "remora.proxy.control"),
                              "policy is compiled data the listener consults, not part of the path"),
    "remora.proxy.telemetry": (("remora.proxy.codec", "remora.proxy.router", "remora.proxy.upstream",
                                "remora.proxy.admin", "remora.proxy.process", "remora.proxy.control"),
                               "telemetry reads the request record only"),
    "remora.proxy.control": (("remora.proxy.codec", "remora.proxy.router", "remora.proxy.upstream",
                              "remora.proxy.security", "remora.proxy.telemetry", "remora.proxy.admin",
                              "remora.proxy.process"),
                             "the control-stream client hands configs to the process, which applies them"),
    "remora.proxy.codec.http1": (("remora.proxy.telemetry.tracing", "remora.proxy.telemetry.access_log", "remora.proxy.telemetry.istio_metrics"),
                           "the codec's tables are built from plain names (proxy/codec/message.py)"),
}
WIRE_THIRD_PARTY = {"msgspec"}


def module_name(path: Path) -> str:
    parts = ("remora",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, in functions too; relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            # `from remora.xds import protocol` imports remora.xds.protocol (or a name of remora.xds).
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def all_imports() -> list[tuple[str, str, int, str]]:
    """(module, file, line, imported) over every module of the remora package."""
    return [(module_name(path), str(path.relative_to(ROOT.parent)), line, imported)
            for path in sorted(ROOT.rglob("*.py")) for line, imported in imports_of(path)]


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_no_package_imports_a_layer_above_it():
    """Each rule of FORBIDDEN holds; a failure names the module, line and import that break it."""
    broken = []
    for module, file, line, imported in all_imports():
        for owner, (forbidden, why) in FORBIDDEN.items():
            if within(module, owner):
                broken += [f"{file}:{line}: {module} imports {imported} ({owner} must not import {bad}: {why})"
                           for bad in forbidden if within(imported, bad)]
    assert not broken, "\n".join(broken)


def test_wire_imports_only_stdlib_and_msgspec():
    """remora.wire, the format both sides speak, imports only the standard library, msgspec and itself."""
    broken = [f"{file}:{line}: {module} imports {imported} (remora.wire may import only the standard "
              "library and msgspec)"
              for module, file, line, imported in all_imports() if within(module, "remora.wire")
              and not within(imported, "remora.wire")
              and imported.split(".")[0] not in sys.stdlib_module_names | WIRE_THIRD_PARTY]
    assert not broken, "\n".join(broken)


def test_runtime_package_never_imports_the_source_tree():
    """No remora module imports benchmarks/ or tests/ (remora bench runs the harness in its own process)."""
    broken = [f"{file}:{line}: {module} imports {imported} (the installed package has no {imported.split('.')[0]}/)"
              for module, file, line, imported in all_imports() if imported.split(".")[0] in ("benchmarks", "tests")]
    assert not broken, "\n".join(broken)


def test_the_scan_sees_the_imports_it_judges():
    """The scanner finds absolute, lazy (in-function) and package-level imports, so a silent rule is not a blind one."""
    found = {(module, imported) for module, _file, _line, imported in all_imports()}
    assert ("remora.proxy.control.xds_state", "remora.wire.protocol") in found
    assert ("remora.cli_data_plane", "remora.intercept.support.TransparentCapture") in found   # in run_from_args()
    assert ("remora.intercept.capture", "remora.proxy.codec.downstream.DownstreamHttp1") in found


def test_transparent_capture_offers_the_whole_capture_seam():
    """intercept's TransparentCapture has every method of proxy's CaptureSupport, with the same parameters."""
    import inspect

    from remora.intercept.support import TransparentCapture
    from remora.proxy.process.capture_seam import CaptureSupport

    wanted = {name for name, value in vars(CaptureSupport).items() if inspect.isfunction(value) and not name.startswith("_")}
    assert wanted == {"outbound", "inbound", "connection", "destinations"}
    for name in wanted:
        seam = list(inspect.signature(getattr(CaptureSupport, name)).parameters)
        assert list(inspect.signature(getattr(TransparentCapture, name)).parameters) == seam, name
