"""Collection rules for the whole suite."""
from __future__ import annotations

from pathlib import Path

DOCKER_TESTS = Path(__file__).resolve().parent / "docker"


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """tests/docker (slow, needs a Docker daemon) runs only when named: `make test-docker`."""
    if collection_path == DOCKER_TESTS:
        named = [Path(arg.split("::")[0]).resolve() for arg in config.args]
        return not any(p == DOCKER_TESTS or DOCKER_TESTS in p.parents for p in named)
    return None
