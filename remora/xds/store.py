"""The control server's config set: files in --config-dir plus resources applied through the API.

Rules:
- One validation for everything: a file edit, an apply, a delete and a sidecar registering
  all build the WHOLE candidate set with `validate_documents` (the loader's strict
  `build_mesh_config`, the same function `remora analyze` runs). A candidate that fails is
  rejected whole and the last good config stays in force.
- Each identity (Kind/namespace/name) has one owner: a file in --config-dir, the API, or
  the registry (sidecars that registered). Applying or deleting a resource that a file
  owns is refused (409: edit the file); a file that starts defining a resource applied
  through the API is a config error until one of the two is removed. Registry resources
  give way to any user resource of the same identity.
- Applied resources persist in <state-dir>/applied.json, written to a temporary file and
  renamed over the old one, so a crash leaves either the old or the new set, never half.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remora.config.loader import (
    ConfigError, ConfigIssue, SpecCache, build_mesh_config, parse_documents, with_namespace,
)
from remora.config.kinds import STORED_KINDS
from remora.config.model import MeshConfig, Resource
from remora.config.object_names import identity_problems, shown_ref

FILE, APPLIED, REGISTRY = "file", "applied", "registry"
STATE_FILE = "applied.json"
STATE_FORMAT = 1

Documents = list[tuple[Any, str]]  # (parsed YAML document, where it came from)


# ---- reading and validating (shared with `remora analyze`) -------------------------------

def validate_documents(docs: Documents, issues: Sequence[ConfigIssue] = (),
                       cache: SpecCache | None = None) -> MeshConfig:
    """The one validation of a whole config set: strict references, every problem at once."""
    try:
        config = build_mesh_config(list(docs), strict_references=True, cache=cache)
    except ConfigError as error:
        raise ConfigError([*issues, *error.issues]) from None
    if issues:
        raise ConfigError(issues)
    return config


def yaml_files(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[ConfigIssue], list[str]]:
    """The YAML files a set of paths names: a directory's *.yaml / *.yml (sorted), or the file."""
    files: list[Path] = []
    issues: list[ConfigIssue] = []
    warnings: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                warnings.append(f"no *.yaml or *.yml files in directory {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            issues.append(ConfigIssue(str(path), "", "", "no such file or directory"))
    return files, issues, warnings


ParseCache = dict[str, tuple[str, Documents, list[ConfigIssue]]]   # path -> (text, documents, issues)


def read_sources(paths: Sequence[str | os.PathLike], namespace: str | None = None,
                 cache: ParseCache | None = None) -> tuple[Documents, list[ConfigIssue], list[str]]:
    """Parse every YAML file the paths name; problems come back as issues, not exceptions.
    Documents without metadata.namespace are in `namespace` (istioctl analyze -n).

    With `cache` (the control server's, across reloads of --config-dir) a file whose text is
    unchanged is not parsed again and gives the same document objects, so the SpecCache
    skips their checks too: YAML 1.2 parsing is pure Python (config/yaml_text.py), about ten
    times slower than a C YAML 1.1 parser, and a reload after one file changed should cost
    that one file. Only entries for the files read this time are kept.
    """
    files, issues, warnings = yaml_files(paths)
    docs: Documents = []
    kept: ParseCache = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            issues.append(ConfigIssue(str(path), "", "", f"cannot read file: {error}"))
            continue
        hit = cache.get(str(path)) if cache is not None else None
        if hit is not None and hit[0] == text:
            parsed, parse_issues = hit[1], hit[2]
        else:
            parsed, parse_issues = parse_documents(text, str(path), namespace)
        kept[str(path)] = (text, parsed, parse_issues)
        docs.extend(parsed)
        issues.extend(parse_issues)
    if cache is not None:
        cache.clear()
        cache.update(kept)
    return docs, issues, warnings


def identity(body: Any) -> str | None:
    """Kind/namespace/name of a parsed document (namespace defaults as the loader's), or None."""
    if not isinstance(body, dict):
        return None
    kind, metadata = body.get("kind"), body.get("metadata")
    if not isinstance(kind, str) or not isinstance(metadata, dict):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not name:
        return None
    namespace = namespace if isinstance(namespace, str) and namespace else "default"
    return f"{kind}/{namespace}/{name}"


def _namespace_of(body: Any) -> str | None:
    metadata = body.get("metadata") if isinstance(body, dict) else None
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if namespace not in (None, "") else None


def naming_issues(body: Any, source: str) -> list[ConfigIssue]:
    """Kubernetes' name rules for a document of a kind Remora stores (others are skipped anyway)."""
    if not isinstance(body, dict) or body.get("kind") not in STORED_KINDS:
        return []
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return []   # the loader names what is missing
    name, namespace = metadata.get("name"), metadata.get("namespace", "default")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        return []
    problems = identity_problems(namespace, name)
    resource = shown_ref(body["kind"], namespace, name)
    return [ConfigIssue(source, resource, path, message) for path, message in problems]


# ---- results ---------------------------------------------------------------------------------

@dataclass
class Change:
    """What an accepted apply or delete did."""

    version: str
    results: list[tuple[str, str]]  # (Kind/namespace/name, created|configured|unchanged|deleted|skipped)
    warnings: list[str] = field(default_factory=list)


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

    # -- lifecycle

    def start(self) -> MeshConfig:
        """Load state and files; raise ConfigError or StateError if they do not form a valid set."""
        self.applied = self._load_state()
        self._read_files()
        self._accept(*self._build(self.file_docs, self.applied), "startup")
        return self.config

    def reload_files(self) -> bool:
        """Re-read --config-dir; True if the new files were accepted (else the old config stays)."""
        self._read_files()
        return self.rebuild("files")

    def rebuild(self, reason: str) -> bool:
        """Validate the current files + applied + registry set; keep the last good one on failure."""
        try:
            self._accept(*self._build(self.file_docs, self.applied), reason)
        except ConfigError as error:
            self._reject(reason, [str(issue) for issue in error.issues])
            if reason == "files":
                self.state.files_valid = False
            return False
        self.state.files_valid = True
        return True

    # -- the API's changes

    def apply(self, text: str, source: str, namespace: str | None = None) -> Change:
        """Create or update resources from a multi-document YAML text, all or nothing.

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
                          for body, src in docs if _namespace_of(body) not in (None, namespace)]
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
            if ref in file_refs:
                self._refuse(409, f"apply {source}",
                             f"{ref} comes from {file_refs[ref]} in --config-dir: edit the file")
            if ref in self.registry_refs:
                self._refuse(409, f"apply {source}",
                             f"{ref} is registered by a connected sidecar; apply it under another name")
            new_refs.append(ref)
            applied[ref] = AppliedResource(body, source, time.time())
        try:
            config, registry_refs = self._build(self.file_docs, applied)
        except ConfigError as error:
            self._refuse(400, f"apply {source}", "invalid configuration", [str(i) for i in error.issues])
        results = []
        index = _index_of(config)
        for ref in new_refs:
            resource = index[ref]
            old = self._index.get(ref) if ref in self.applied else None
            if old is None:
                action = "created"
            elif old.spec != resource.spec or old.api_version != resource.api_version:
                action = "configured"
            else:
                action = "unchanged"
            applied[ref] = AppliedResource(resource.document(), source,
                                           self.applied[ref].applied_at if action == "unchanged" else time.time())
            results.append((ref, action))
        results += [(ref, "skipped") for ref in skipped]
        self._save_state(applied)
        self.applied = applied
        self._accept(config, registry_refs, f"apply {source}")
        return Change(self.config.version, results, list(config.warnings))

    def delete(self, ref: str) -> Change:
        """Remove an applied resource; refuse file and registry resources, and dangling references."""
        if ref not in self.applied:
            file_refs = self._file_refs()
            if ref in file_refs:
                self._refuse(409, f"delete {ref}", f"{ref} comes from {file_refs[ref]} in --config-dir: "
                                                  "edit the file (or remove it) to delete it")
            if ref in self.registry_refs:
                self._refuse(409, f"delete {ref}", f"{ref} is registered by a connected sidecar: it goes "
                                                  "away when the sidecar disconnects (after the grace period)")
            raise ChangeRefused(404, f"{ref} not found")
        applied = {key: value for key, value in self.applied.items() if key != ref}
        try:
            config, registry_refs = self._build(self.file_docs, applied)
        except ConfigError as error:
            self._refuse(400, f"delete {ref}", f"deleting {ref} would leave the config invalid",
                         [str(i) for i in error.issues])
        self._save_state(applied)
        self.applied = applied
        self._accept(config, registry_refs, f"delete {ref}")
        return Change(self.config.version, [(ref, "deleted")], list(config.warnings))

    # -- reading

    def lookup(self, ref: str) -> Resource | None:
        return self._index.get(ref)

    def resources(self) -> list[Resource]:
        """Every resource of the config in force, sorted by identity."""
        return [self._index[ref] for ref in sorted(self._index)]

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

    def _file_refs(self) -> dict[str, str]:
        refs: dict[str, str] = {}
        for body, source in self.file_docs:
            ref = identity(body)
            if ref is not None:
                refs.setdefault(ref, source)
        return refs

    def _build(self, file_docs: Documents, applied: dict[str, AppliedResource]) -> tuple[MeshConfig, frozenset[str]]:
        """Validate files + applied + registry as one set; raise ConfigError."""
        issues = list(self.file_issues)
        for body, source in file_docs:
            ref = identity(body)
            if ref in applied:
                issues.append(ConfigIssue(source, ref, "", "also applied through the API: remove it from "
                                          "the file, or `remora delete` it to let the file own it"))
        user = list(file_docs) + [(applied[ref].document, applied[ref].source) for ref in sorted(applied)]
        user_refs = {identity(body) for body, _ in user}
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
        if self.state_path is None or not self.state_path.exists():
            return {}
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r} (expected {STATE_FORMAT})")
            applied = {}
            for item in data["resources"]:
                ref = identity(item["document"])
                if ref is None:
                    raise ValueError(f"resource without kind/metadata.name: {item['document']!r:.100}")
                applied[ref] = AppliedResource(item["document"], item["source"], float(item["applied_at"]))
            return applied
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise StateError(f"{self.state_path}: cannot load applied resources: {error}") from None

    def _save_state(self, applied: dict[str, AppliedResource]) -> None:
        if self.state_path is None:
            return
        data = {"format": STATE_FORMAT, "resources": [
            {"document": item.document, "source": item.source, "applied_at": item.applied_at}
            for _, item in sorted(applied.items())]}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".applied-", dir=self.state_path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except OSError as error:
            raise ChangeRefused(500, f"cannot save applied resources to {self.state_path}: {error}") from None


def _index_of(config: MeshConfig) -> dict[str, Resource]:
    return {r.ref: r for r in config.resources()}
