"""Istio's own validation cases (tests/fixtures/istio-validation), loaded one document at a time."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from remora.config.loader import ConfigError, load_mesh_text

CASES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "istio-validation"
_EXPECT = re.compile(r"^# expect: (loads|refused|unsupported)(?: (\S+))?$", re.M)
_MIRRORS = re.compile(r"^# mirrors: (.+)$", re.M)


def _cases():
    """A case runs from one `# mirrors:` line to the next (one document, or a few loaded together)."""
    for path in sorted(CASES_DIR.glob("*.yaml")):
        text = path.read_text()
        starts = [m.start() for m in _MIRRORS.finditer(text)]
        assert starts, f"{path.name}: no `# mirrors:` line"
        for number, (start, end) in enumerate(zip(starts, [*starts[1:], len(text)]), 1):
            chunk = text[start:end]
            expect = _EXPECT.search(chunk)
            assert expect, f"{path.name} case {number}: needs an `# expect:` line"
            yield pytest.param(chunk, expect.group(1), expect.group(2), id=f"{path.stem}-{number}")


@pytest.mark.parametrize("text, outcome, field_path", list(_cases()))
def test_document_meets_istio_expectation(text, outcome, field_path):
    """A case loads iff Istio accepts it; else it is refused at the field (an unimplemented Istio field: "not supported by Remora")."""
    if outcome == "loads":
        load_mesh_text(text, "case.yaml")
        return
    with pytest.raises(ConfigError) as refused:
        load_mesh_text(text, "case.yaml")
    paths = {issue.field_path: issue.message for issue in refused.value.issues}
    assert field_path in paths, f"expected an issue at {field_path}, got {paths}"
    if outcome == "unsupported":
        assert "not supported by Remora" in paths[field_path] and "unknown field" not in paths[field_path]


def test_every_kind_remora_reads_has_cases():
    """The fixtures cover every Istio kind whose validation Remora holds to Istio's."""
    kinds = {m for path in CASES_DIR.glob("*.yaml") for m in re.findall(r"^kind: (\w+)$", path.read_text(), re.M)}
    assert kinds >= {"ServiceEntry", "WorkloadEntry", "DestinationRule", "PeerAuthentication", "VirtualService",
                     "AuthorizationPolicy", "RequestAuthentication", "Telemetry"}


@pytest.mark.parametrize("path, valid", [
    # security_test.go TestCheckValidPathTemplate, case by case
    ("/{*}/foo", True), ("/{*}/foo/", True), ("/foo/{**}/bar", True), ("/foo/bar/{**}", True),
    ("/foo/{**}buzz/bar", False), ("/{*}/foo/{}/bar", False), ("/foo/{*}/bar/*", False),
    ("/foo/{*}/bar/**/buzz", False), ("/foo/{buzz}/bar", False), ("/{buzz}", False),
    ("/foo/{buzz}/bar/{**}", False), ("/foo/{buzz=*}/bar/{**}", False), ("/{*}/foo/{buzz=**}/bar", False),
    ("/{*}/foo/{**}bar", False), ("/{*}/foo/{*}.txt", False),
])
def test_path_templates_as_istio_checks_them(path, valid):
    """AuthorizationPolicy path templates are accepted and refused exactly as Istio's CheckValidPathTemplate."""
    from remora.config.path_templates import template_problem
    assert (template_problem(path) is None) == valid
