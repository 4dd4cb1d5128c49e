"""Reading config sources: YAML files and directories into documents, identities, one validation.

Shared by the control server's store, `remora analyze` and `remora envoy-config`.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from remora.config.loader import SPEC_TYPES, ConfigError, ConfigIssue, SpecCache, build_mesh_config, parse_documents
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


def read_sources(paths: Sequence[str | os.PathLike]) -> tuple[Documents, list[ConfigIssue], list[str]]:
    """Parse every YAML file the paths name; problems come back as issues, not exceptions."""
    files, issues, warnings = yaml_files(paths)
    docs: Documents = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            issues.append(ConfigIssue(str(path), "", "", f"cannot read file: {error}"))
            continue
        parsed, parse_issues = parse_documents(text, str(path))
        docs.extend(parsed)
        issues.extend(parse_issues)
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


def naming_issues(body: Any, source: str) -> list[ConfigIssue]:
    """Kubernetes' name rules for a document of a kind Remora stores (others are skipped anyway)."""
    if not isinstance(body, dict) or body.get("kind") not in SPEC_TYPES:
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
