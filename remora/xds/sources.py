"""Reading config sources: YAML files and directories into documents, identities, one validation.

Shared by the control server's store, `remora analyze` and `remora envoy-config`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from remora.config.kinds import STORED_KINDS
from remora.config.loader import ConfigError, ConfigIssue, SpecCache, build_mesh_config, parse_documents
from remora.config.model import MeshConfig
from remora.config.object_names import identity_problems, shown_ref

Documents = list[tuple[Any, str]]  # (parsed YAML document, where it came from)


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


def namespace_of(body: Any) -> str | None:
    """metadata.namespace of a parsed document, or None when it has none."""
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
