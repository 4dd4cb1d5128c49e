"""The last good pushed config on disk: `<state-dir>/snapshot.json`, replaced atomically.

A sidecar that restarts while the control server is down serves from this file instead
of serving nothing. Rules:

- Written only after a push was accepted and every type is held, so the file is always a
  complete config that this sidecar served.
- Written to a temporary file in the same directory, fsynced, then renamed over the old
  one: a crash mid-write leaves the previous snapshot, never half a file.
- Read leniently at boot: a missing file means "no snapshot"; a malformed one is
  reported (what and where) and ignored, because the proxy must still start.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from typing import Any

FILE_NAME = "snapshot.json"
FORMAT = 1


def default_state_dir(namespace: str, workload: str, admin_port: int) -> str:
    """`$TMPDIR/remora-proxy-<namespace>-<workload>-<admin port>`: one per sidecar on a host."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{namespace}-{workload}-{admin_port}")
    return os.path.join(tempfile.gettempdir(), f"remora-proxy-{safe}")


class SnapshotStore:
    """Reads and writes one sidecar's snapshot file."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME)

    def save(self, types: dict[str, Any], node_id: str) -> None:
        """Replace the snapshot with `types` ({type: {version, resources}}) atomically."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        body = {"format": FORMAT, "node": node_id,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "types": types}
        fd, tmp = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=self.state_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def load(self) -> dict[str, Any] | None:
        """The saved types ({type: {version, resources}}), or None when there is no file;
        raise ValueError naming the file and what is wrong with it."""
        try:
            with open(self.path, encoding="utf-8") as f:
                body = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.path}: cannot read: {error}") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{self.path}: not JSON: {error}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("types"), dict):
            raise ValueError(f"{self.path}: not a Remora snapshot (format {FORMAT} with a 'types' mapping)")
        return body["types"]
