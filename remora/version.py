"""Remora's version, read from the installed distribution (pyproject.toml is its one source).

Read only when asked: importlib.metadata (email, zipfile, ...) costs about 2.6 MiB of RSS, so
a sidecar imports it when a feature needs the version (--control's Node, admin's
/server_info, `--version`), never at start."""
from __future__ import annotations


def remora_version() -> str:
    """The installed version, or "unknown (not installed)" when run from a source tree."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("remora")
    except PackageNotFoundError:
        return "unknown (not installed)"
