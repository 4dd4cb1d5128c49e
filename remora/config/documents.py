"""Istio YAML text and files -> documents, and the problems found on the way (loader.py's
first stage). Every problem is collected, never raised one by one: ConfigError carries them
all, in load order (file, then document), each naming file, resource and field path.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remora.config import yaml_text

TOP_LEVEL_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where it is (file, resource, field path) and what is wrong."""

    file: str
    resource: str  # "Kind/namespace/name", or "" when the document has no readable identity
    field_path: str  # "spec.http[0].route[1].weight", or "" when it is about the whole document
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.resource, self.field_path, self.message) if part)


class ConfigError(Exception):
    """The config set is invalid; `.issues` lists every problem found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.issues)
        header = f"{count} configuration error{'' if count == 1 else 's'}:"
        return "\n".join([header, *(f"  {issue}" for issue in self.issues)])


@dataclass(slots=True)   # slots: the control server makes ten thousand per change
class Document:
    body: Any
    source: str
    index: int  # 1-based position in its file, counting empty documents


@dataclass
class Collector:
    issues: list[ConfigIssue] = field(default_factory=list)
    positions: list[tuple[int, int, int]] = field(default_factory=list)  # (file, document, seq) per issue
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # info lines: non-mesh kinds skipped
    skipped: list[str] = field(default_factory=list)  # Kind/namespace/name of skipped mesh kinds
    file_order: dict[str, int] = field(default_factory=dict)  # so issues print in load order

    def saw(self, source: str) -> None:
        self.file_order.setdefault(source, len(self.file_order))

    def issue(self, source: str, resource: str, path: str, message: str, document: int = 0) -> None:
        self.saw(source)
        self.positions.append((self.file_order[source], document, len(self.issues)))
        self.issues.append(ConfigIssue(source, resource, path, message))

    def ordered_issues(self) -> list[ConfigIssue]:
        """Issues in load order (file, document), whatever pass found them."""
        return [issue for _, issue in sorted(zip(self.positions, self.issues), key=lambda pair: pair[0])]


def parse_yaml(text: str, source: str, collector: Collector, namespace: str | None = None) -> list[Document]:
    collector.saw(source)
    documents: list[Document] = []
    count = 0   # YAML documents read (a List's items share their document's number)
    try:
        for body in yaml_text.load_all(text):
            count += 1
            for item in _list_items(body):
                documents.append(Document(with_namespace(item, namespace), source, count))
    except yaml_text.YamlSyntaxError as error:
        collector.issue(source, "", "", f"document {count + 1}: invalid YAML: {error}", count + 1)
    return documents


def _list_items(body: Any) -> list[Any]:
    """A Kubernetes `kind: List` (what `kubectl get -o yaml` prints) stands for its items."""
    if isinstance(body, dict) and body.get("apiVersion") == "v1" and body.get("kind") == "List" \
            and isinstance(body.get("items"), list):
        return body["items"]
    return [body]


def with_namespace(body: Any, namespace: str | None) -> Any:
    """`kubectl apply -n NAMESPACE`: a document without metadata.namespace gets NAMESPACE.

    A document that names its own namespace keeps it (whether that is an error is the
    caller's rule: `remora apply -n` refuses a mismatch, as kubectl does).
    """
    if namespace is not None and isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        if body["metadata"].get("namespace") in (None, ""):
            body["metadata"]["namespace"] = namespace
    return body


def yaml_files(paths: Sequence[str | os.PathLike], collector: Collector) -> list[Path]:
    files: list[Path] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                collector.warnings.append(f"no *.yaml or *.yml files in directory {path}")
        elif path.is_file():
            found = [path]
        else:
            collector.issue(str(path), "", "", "no such file or directory")
            found = []
        for file in found:
            if file.resolve() not in seen:  # the same file named twice is read once
                seen.add(file.resolve())
                files.append(file)
    return files
