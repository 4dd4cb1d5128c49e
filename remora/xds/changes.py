"""What a change to the control server's config set produces, and where the applied set is
kept between starts (store.py's records).

`<state-dir>/applied.json` is written to a temporary file, synced and renamed over the old
one, so a crash leaves either the old or the new set, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from remora.config.model import MeshConfig
from remora.xds.sources import identity

STATE_FILE = "applied.json"
STATE_FORMAT = 1


@dataclass
class Change:
    """What an accepted apply or delete did."""

    version: str
    results: list[tuple[str, str]]  # (Kind/namespace/name, created|configured|unchanged|deleted|skipped)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PendingChange:
    """An apply or delete validated but not yet in force: the applied set it makes."""

    applied: dict[str, AppliedResource]
    config: MeshConfig
    registry_refs: frozenset[str]
    reason: str
    results: list[tuple[str, str]]


class ChangeRefused(Exception):
    """An apply or delete the store will not make: HTTP status, message and every problem."""

    def __init__(self, status: int, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors)


class StateError(Exception):
    """The state file exists but cannot be used."""


@dataclass
class AppliedResource:
    document: dict
    source: str        # the file name the client gave (`remora apply -f reviews.yaml`)
    applied_at: float
    # A fingerprint of the file's version of this resource when it was applied (None: no
    # file defined it). While the file still says exactly this, the applied version stays in
    # force over it. A digest, not the document: YAML can hold values JSON cannot store.
    file_fingerprint: str | None = None


@dataclass
class ConfigFailure:
    """A rejected change: when, where it came from, and every error."""
    at: float
    source: str
    errors: list[str]


@dataclass
class ConfigState:
    """What /v1/status shows about the config: the version served and the last failure."""

    version: str = ""
    source: str = ""         # the change that produced the version served
    updated_at: float = 0.0
    files_valid: bool = True
    last_error: ConfigFailure | None = None


def read_state_file(path: Path) -> dict[str, AppliedResource]:
    """The applied set kept in `path` ({} when there is none); StateError naming the file."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r} (expected {STATE_FORMAT})")
        applied = {}
        for item in data["resources"]:
            ref = identity(item["document"])
            if ref is None:
                raise ValueError(f"resource without kind/metadata.name: {item['document']!r:.100}")
            applied[ref] = AppliedResource(item["document"], item["source"], float(item["applied_at"]),
                                           item.get("file_fingerprint"))
        return applied
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise StateError(f"{path}: cannot load applied resources: {error}") from None


def write_state_file(path: Path, applied: dict[str, AppliedResource]) -> None:
    """Replace `path` with the applied set, atomically; ChangeRefused (500) if it cannot be written."""
    data = {"format": STATE_FORMAT, "resources": [
        {"document": item.document, "source": item.source, "applied_at": item.applied_at,
         "file_fingerprint": item.file_fingerprint}
        for _, item in sorted(applied.items())]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".applied-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise ChangeRefused(500, f"cannot save applied resources to {path}: {error}") from None
