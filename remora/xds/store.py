"""The control server's config set: files in --config-dir plus resources applied through the API.

Rules:
- One validation for everything: a file edit, an apply, a delete and a sidecar registering
  all build the WHOLE candidate set with `validate_documents` (the loader's strict
  `build_mesh_config`, the same function `remora analyze` runs). A candidate that fails is
  rejected whole and the last good config stays in force.
- Files and the API side by side, as `kubectl apply` beside a GitOps sync: the latest
  write of a resource wins. `remora apply` of a resource a file defines puts the applied
  version in force over the file's (an override: `remora get` shows the file it overrides);
  `remora delete` of it brings the file's version back. A later change to that resource in
  the file (edited, added or removed there) wins over the earlier apply: the override is
  dropped. Deleting a resource only a file defines is refused (409: remove it from the file),
  since the file would define it again. Registry resources (sidecars that registered) give
  way to any user resource of the same identity and cannot be applied or deleted.
- An apply or delete is planned (validated, nothing changed: `plan_apply`, `plan_delete`)
  and then committed; with replicas over etcd the shared store takes the change in
  between (replicas.py), and a change another replica made arrives as a whole applied set
  (`replace_applied`), validated like any other candidate.
- Applied resources persist in <state-dir>/applied.json, written to a temporary file and
  renamed over the old one, so a crash leaves either the old or the new set, never half.
  Each override keeps the file's version it replaced, so a file edited while the server was
  down still wins at the next start.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from remora.config.kinds import STORED_KINDS
from remora.config.loader import ConfigError, ConfigIssue, SpecCache, parse_documents, with_namespace
from remora.config.model import MeshConfig, Resource
# Re-exported: callers read sources through the store's module as before.
from remora.xds.sources import (  # noqa: F401
    Documents, ParseCache, identity, naming_issues, namespace_of, read_sources, validate_documents,
    yaml_files,
)
from remora.xds.changes import (  # noqa: F401 (the records are re-exported: callers import them from here)
    STATE_FILE, AppliedResource, Change, ChangeRefused, ConfigFailure, ConfigState, PendingChange, StateError,
    read_state_file, write_state_file,
)

FILE, APPLIED, REGISTRY = "file", "applied", "registry"

# ---- the store -------------------------------------------------------------------------------

class ConfigStore:
    """Files + applied resources + registry resources, validated as one set."""

    def __init__(self, config_dir: str | os.PathLike | None, state_dir: str | os.PathLike | None,
                 extra: Callable[[Documents], Documents] = lambda docs: [],
                 on_error: Callable[[ConfigFailure], None] = lambda error: None) -> None:
        self.config_dir = Path(config_dir) if config_dir is not None else None
        self.state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
        self.extra = extra          # registry documents for a candidate set of user documents
        self.on_error = on_error    # called for every rejected change (metrics, log)
        self.file_docs: Documents = []
        self.file_issues: list[ConfigIssue] = []
        self.file_warnings: list[str] = []
        self.applied: dict[str, AppliedResource] = {}
        self.registry_refs: frozenset[str] = frozenset()
        self.config = MeshConfig()
        self.state = ConfigState()
        self._index: dict[str, Resource] = {}
        self._specs = SpecCache()   # unchanged documents are not re-checked on every change
        self._parsed: ParseCache = {}   # unchanged files are not parsed again on a reload
        # (file_docs it was made from, the identity of each, ref -> (document, file)): the
        # files change far less often than the applied set is validated again.
        self._file_identities: tuple[Documents, list[str | None], dict[str, tuple[Any, str]]] = ([], [], {})

    # -- lifecycle

    def start(self, applied: dict[str, AppliedResource] | None = None) -> MeshConfig:
        """Load state (or take `applied`, read from a shared store) and files; raise ConfigError
        or StateError if they do not form a valid set."""
        self.applied = self._load_state() if applied is None else applied
        self._read_files()
        applied = self._without_superseded(self.applied)
        self._accept(*self._build(applied), "startup")
        if applied != self.applied:
            self._save_state(applied)
            self.applied = applied
        return self.config

    def reload_files(self) -> bool:
        """Re-read --config-dir; True if the new files were accepted (else the old config stays)."""
        self._read_files()
        return self.rebuild("files")

    def rebuild(self, reason: str) -> bool:
        """Validate the current files + applied + registry set; keep the last good one on failure.
        After a file change, overrides of the resources it changed are dropped (the file won)."""
        applied = self._without_superseded(self.applied) if reason == "files" else self.applied
        try:
            self._accept(*self._build(applied), reason)
        except ConfigError as error:
            self._reject(reason, [str(issue) for issue in error.issues])
            if reason == "files":
                self.state.files_valid = False
            return False
        if applied != self.applied:
            self._save_state(applied)
            self.applied = applied
        self.state.files_valid = True
        return True

    # -- the API's changes

    def apply(self, text: str, source: str, namespace: str | None = None) -> Change:
        """Create or update resources from a multi-document YAML text, all or nothing."""
        return self.commit(self.plan_apply(text, source, namespace))

    def delete(self, ref: str) -> Change:
        """Remove an applied resource (see plan_delete)."""
        return self.commit(self.plan_delete(ref))

    def commit(self, pending: PendingChange) -> Change:
        """Put a planned change in force (after a shared store, if any, has taken it)."""
        self._save_state(pending.applied)
        self.applied = pending.applied
        self._accept(pending.config, pending.registry_refs, pending.reason)
        return Change(self.config.version, pending.results, list(pending.config.warnings))

    def replace_applied(self, applied: dict[str, AppliedResource]) -> bool:
        """Another replica changed the applied set in the shared store: validate and take it.
        False if the set is invalid here (the last good config stays; on_error names why)."""
        previous, self.applied = self.applied, applied
        if self.rebuild("store"):
            return True
        self.applied = previous
        return False

    def plan_apply(self, text: str, source: str, namespace: str | None = None) -> PendingChange:
        """The change an apply makes, validated, not yet in force (commit puts it there).

        `namespace` is `kubectl apply -n`: documents without metadata.namespace go there, and
        a document naming another namespace is refused (kubectl's rule).
        """
        docs, issues = parse_documents(text, source)
        if issues:
            self._refuse(400, f"apply {source}", "invalid YAML", [str(i) for i in issues])
        docs = [(body, src) for body, src in docs if body is not None]
        if namespace is not None:
            mismatched = [f"{src}: {identity(body)}: metadata.namespace: the namespace from the provided object "
                          f"{body['metadata']['namespace']!r} does not match the namespace {namespace!r}"
                          for body, src in docs if namespace_of(body) not in (None, namespace)]
            if mismatched:
                self._refuse(400, f"apply {source}", "namespace mismatch", mismatched)
            docs = [(with_namespace(body, namespace), src) for body, src in docs]
        if not docs:
            self._refuse(400, f"apply {source}", f"{source}: no resources in the request body")
        naming = [issue for body, src in docs for issue in naming_issues(body, src)]
        if naming:   # before any lookup: a bad name must not reach the identity key space
            self._refuse(400, f"apply {source}", "invalid metadata.name or metadata.namespace",
                         [str(issue) for issue in naming])
        file_refs = self._file_refs()
        applied = dict(self.applied)
        new_refs: list[str] = []
        skipped: list[str] = []
        for body, _ in docs:
            ref = identity(body)
            if ref is None:
                continue  # the validation below names what is missing
            if ref.split("/", 1)[0] not in STORED_KINDS:
                skipped.append(ref)
                continue
            if ref in self.registry_refs:
                self._refuse(409, f"apply {source}",
                             f"{ref} is registered by a connected sidecar; apply it under another name")
            new_refs.append(ref)
            applied[ref] = AppliedResource(body, source, time.time(), fingerprint(file_refs.get(ref, (None,))[0]))
        try:
            config, registry_refs = self._build(applied)
        except ConfigError as error:
            self._refuse(400, f"apply {source}", "invalid configuration", [str(i) for i in error.issues])
        results = []
        index = _index_of(config)
        for ref in new_refs:
            resource = index[ref]
            # What was in force before: the applied version, or the file's it now overrides.
            old = self._index.get(ref) if ref in self.applied or ref in file_refs else None
            if old is None:
                action = "created"
            elif old.spec != resource.spec or old.api_version != resource.api_version:
                action = "configured"
            else:
                action = "unchanged"
            applied[ref] = AppliedResource(resource.document(), source,
                                           self.applied[ref].applied_at if action == "unchanged" and ref in self.applied
                                           else time.time(), applied[ref].file_fingerprint)
            results.append((ref, action))
        results += [(ref, "skipped") for ref in skipped]
        return PendingChange(applied, config, registry_refs, f"apply {source}", results)

    def plan_delete(self, ref: str) -> PendingChange:
        """Remove an applied resource (an override: the file's version comes back); refuse
        file-only and registry resources, and dangling references."""
        file_refs = self._file_refs()
        if ref not in self.applied:
            if ref in file_refs:
                self._refuse(409, f"delete {ref}", f"{ref} comes from {file_refs[ref][1]} in --config-dir: "
                                                  "remove it from the file to delete it")
            if ref in self.registry_refs:
                self._refuse(409, f"delete {ref}", f"{ref} is registered by a connected sidecar: it goes "
                                                  "away when the sidecar disconnects (after the grace period)")
            raise ChangeRefused(404, f"{ref} not found")
        applied = {key: value for key, value in self.applied.items() if key != ref}
        try:
            config, registry_refs = self._build(applied)
        except ConfigError as error:
            self._refuse(400, f"delete {ref}", f"deleting {ref} would leave the config invalid",
                         [str(i) for i in error.issues])
        # An override deleted: the file's version is in force again.
        action = f"deleted (back to {file_refs[ref][1]})" if ref in file_refs else "deleted"
        return PendingChange(applied, config, registry_refs, f"delete {ref}", [(ref, action)])

    # -- reading

    def lookup(self, ref: str) -> Resource | None:
        return self._index.get(ref)

    def resources(self) -> list[Resource]:
        """Every resource of the config in force, sorted by identity."""
        return [self._index[ref] for ref in sorted(self._index)]

    def overrides(self, ref: str) -> str | None:
        """The file whose version of `ref` an applied resource is in force over, or None."""
        item = self.applied.get(ref)
        if item is None:
            return None
        return self._file_refs().get(ref, (None, None))[1]

    def origin(self, ref: str) -> str:
        if ref in self.applied:
            return APPLIED
        if ref in self.registry_refs:
            return REGISTRY
        return FILE

    # -- internals

    def _read_files(self) -> None:
        if self.config_dir is None:
            self.file_docs, self.file_issues, self.file_warnings = [], [], []
            return
        self.file_docs, self.file_issues, self.file_warnings = read_sources([self.config_dir], cache=self._parsed)

    def _file_refs(self) -> dict[str, tuple[Any, str]]:
        """ref -> (document, file) of every resource the files define (the first, if twice)."""
        return self._identities()[2]

    def _identities(self) -> tuple[Documents, list[str | None], dict[str, tuple[Any, str]]]:
        if self._file_identities[0] is not self.file_docs:
            identities = [identity(body) for body, _ in self.file_docs]
            refs: dict[str, tuple[Any, str]] = {}
            for (body, source), ref in zip(self.file_docs, identities):
                if ref is not None:
                    refs.setdefault(ref, (body, source))
            self._file_identities = (self.file_docs, identities, refs)
        return self._file_identities

    def _without_superseded(self, applied: dict[str, AppliedResource]) -> dict[str, AppliedResource]:
        """The applied resources whose file version is still what it was at apply time; the
        others were changed in the files since (edited, added or removed there): the file won."""
        file_refs = self._file_refs()
        return {ref: item for ref, item in applied.items()
                if fingerprint(file_refs.get(ref, (None, None))[0]) == item.file_fingerprint}

    def _build(self, applied: dict[str, AppliedResource]) -> tuple[MeshConfig, frozenset[str]]:
        """Validate files + applied + registry as one set, applied versions in force over the
        files' of the same identity; raise ConfigError."""
        issues = list(self.file_issues)
        file_docs, identities, refs = self._identities()
        files = [doc for doc, ref in zip(file_docs, identities) if ref not in applied] if applied else list(file_docs)
        user = files + [(applied[ref].document, applied[ref].source) for ref in sorted(applied)]
        user_refs = set(refs).union(identity(item.document) for item in applied.values())
        user_refs.discard(None)
        extra = [(body, source) for body, source in self.extra(user) if identity(body) not in user_refs]
        config = validate_documents(user + extra, issues, self._specs)
        return config, frozenset(identity(body) for body, _ in extra)

    def _accept(self, config: MeshConfig, registry_refs: frozenset[str], reason: str) -> None:
        changed = config.version != self.config.version or not self.state.version
        self.config = config
        self.registry_refs = registry_refs
        self._index = _index_of(config)
        if changed:
            self.state.version, self.state.source, self.state.updated_at = config.version, reason, time.time()

    def _reject(self, source: str, errors: list[str]) -> None:
        self.state.last_error = ConfigFailure(time.time(), source, errors)
        self.on_error(self.state.last_error)

    def _refuse(self, status: int, source: str, message: str, errors: Sequence[str] = ()) -> None:
        if status == 400:  # invalid config, as opposed to a request for something not allowed
            self._reject(source, list(errors) or [message])
        raise ChangeRefused(status, message, errors)

    def _load_state(self) -> dict[str, AppliedResource]:
        return read_state_file(self.state_path) if self.state_path is not None else {}

    def _save_state(self, applied: dict[str, AppliedResource]) -> None:
        if self.state_path is not None:
            write_state_file(self.state_path, applied)

def fingerprint(document: Any) -> str | None:
    """A stable digest of a parsed YAML document (None for none): equal documents, equal digests."""
    if document is None:
        return None
    text = json.dumps(document, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _index_of(config: MeshConfig) -> dict[str, Resource]:
    return {r.ref: r for r in config.resources()}
