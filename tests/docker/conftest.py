"""Fixtures of `make test-docker`: skip with the reason when no Docker daemon can be had."""
from __future__ import annotations

import pytest

from tests.docker.base_image import BaseImageError, ensure_base_image
from tests.docker.docker_env import Daemon, DockerUnavailable, IMAGE_TAG, build_image


@pytest.fixture(scope="session")
def docker_daemon():
    daemon = Daemon()
    try:
        daemon.ensure()
    except DockerUnavailable as why:
        daemon.stop()   # a dockerd that started but never answered, and its log
        pytest.skip(f"Docker tests skipped: {why}")
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def remora_image(docker_daemon, request) -> str:
    """The project's Dockerfile built on the locally made Debian base image."""
    try:
        base = ensure_base_image()
    except BaseImageError as why:
        pytest.skip(f"Docker tests skipped: cannot make the base image: {why}")
    seconds = build_image(base)
    request.config.stash[BUILD_SECONDS] = seconds
    return IMAGE_TAG


BUILD_SECONDS = pytest.StashKey[float]()


def pytest_terminal_summary(terminalreporter, config):
    seconds = config.stash.get(BUILD_SECONDS, None)
    if seconds is not None:
        terminalreporter.write_line(f"docker build of {IMAGE_TAG}: {seconds:.0f}s")
