"""Golden files for `remora inject`: tests/fixtures/inject/NAME.yaml -> expected/NAME.yaml.

Regenerate after an intended change with `REMORA_UPDATE_GOLDEN=1 .venv/bin/python -m pytest
-q tests/unit/test_kube_inject_golden.py`, then read the diff before committing it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from remora.kube.inject import inject_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "inject"
INPUTS = sorted(p.name for p in FIXTURES.glob("*.yaml"))
UNCHANGED = {"opt-out.yaml", "host-network.yaml", "already-injected.yaml"}


def _inject(name: str) -> str:
    return inject_text((FIXTURES / name).read_bytes().decode()).output


@pytest.mark.parametrize("name", INPUTS)
def test_matches_golden(name):
    """Each fixture injects to exactly its golden file."""
    output = _inject(name)
    golden = FIXTURES / "expected" / name
    if os.environ.get("REMORA_UPDATE_GOLDEN"):
        golden.write_bytes(output.encode())
    assert golden.exists(), f"no golden file {golden}; run with REMORA_UPDATE_GOLDEN=1"
    assert output == golden.read_bytes().decode()


@pytest.mark.parametrize("name", INPUTS)
def test_injecting_twice_changes_nothing(name):
    """Injecting an injected manifest gives back the same bytes."""
    once = _inject(name)
    assert inject_text(once).output == once


@pytest.mark.parametrize("name", sorted(UNCHANGED))
def test_skipped_workloads_are_left_byte_for_byte(name):
    """Opted-out, hostNetwork and already-injected workloads come out identical to the input."""
    assert _inject(name) == (FIXTURES / name).read_bytes().decode()


def test_every_fixture_but_the_skipped_ones_gets_a_sidecar():
    """The fixture set really exercises injection: every other file has a pod template injected."""
    for name in sorted(set(INPUTS) - UNCHANGED):
        assert inject_text((FIXTURES / name).read_text()).injected >= 1, name


def test_untouched_documents_are_copied_verbatim():
    """In a multi-document file the Service, the ConfigMap (odd spacing, block scalar) and the
    separators come out as the very same text."""
    source = (FIXTURES / "multi-document.yaml").read_text()
    output = _inject("multi-document.yaml")
    untouched = source[:source.index("---\napiVersion: apps/v1")]
    assert output.startswith(untouched)
    assert "      ratings.port=9080     \n" in output
    assert output.endswith("...\n---\n# trailing comment-only document\n")


@pytest.mark.parametrize("name", INPUTS)
def test_output_validates_against_the_kubernetes_models(name):
    """Every document of every injected output is a valid object of its kind (no unknown fields)."""
    from tests.kube_schema import problems
    for document in yaml.safe_load_all(_inject(name)):
        if document is not None:
            assert problems(document) == [], f"{name}: {document.get('kind')}"
