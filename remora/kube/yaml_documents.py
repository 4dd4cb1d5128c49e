"""Multi-document YAML text split into documents that keep their exact source text.

`remora inject` must leave every document it does not change byte-for-byte alone, so the
input is never re-serialised as a whole: it is cut into chunks at the `---` lines (a line
starting with `---` is a document marker wherever it appears, even inside a block scalar,
so a line-based cut is exact), each chunk is parsed on its own with ruamel.yaml's
round-trip loader, and only a chunk whose data changed is dumped again, with the
indentation style guessed from its own text so that its comments stay where they were.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

_MARKER = re.compile(r"---(?:[ \t]|\r?\n|$)")
_MARKER_ONLY = re.compile(r"---[ \t]*(?:#.*)?\r?\n?$")
_END = re.compile(r"\.\.\.[ \t]*(?:#.*)?\r?\n?$")
_KEY_LINE = re.compile(r"^( *)(?:- +)?[^\s#-][^#]*:[ \t]*(?:#.*)?$")


class DocumentError(ValueError):
    """A document that is not valid YAML; `line` is 1-based in the whole input."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


@dataclass
class Document:
    """One chunk of the input: its exact text and where it starts."""

    text: str
    line: int                 # 1-based line of the chunk's first line in the input
    head: str = ""            # directives and the `---` line, kept verbatim on re-dump
    body: str = ""            # what is parsed
    tail: str = ""            # a `...` end marker and what follows it, kept verbatim on re-dump
    data: Any = None          # round-trip data (CommentedMap ...), None for an empty chunk

    @property
    def body_line(self) -> int:
        return self.line + self.head.count("\n")

    @property
    def content_line(self) -> int:
        """The line of the first thing that is not a comment or blank: where error messages point."""
        for offset, line in enumerate(self.body.splitlines()):
            if line.strip() and not line.lstrip().startswith("#"):
                return self.body_line + offset
        return self.body_line


def split_documents(text: str) -> list[Document]:
    """Cut `text` into chunks at `---` lines; directive lines (`%YAML`) go with the next chunk."""
    docs: list[Document] = []
    current: list[str] = []
    start = 1
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if _MARKER.match(line) and current:
            cut = _trailing_directives(current)
            if cut > 0:  # 0: the chunk so far is only directives, which belong to this marker
                docs.append(Document("".join(current[:cut]), start))
                current, start = current[cut:], start + cut
        current.append(line)
    if current or not docs:
        docs.append(Document("".join(current), start))
    for doc in docs:
        _split_head(doc)
    return docs


def _trailing_directives(lines: list[str]) -> int:
    """Index where the directives that precede the next marker start; len(lines) when there are none."""
    first = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        stripped = lines[i].strip()
        if stripped.startswith("%"):
            first = i
        elif stripped and not stripped.startswith("#"):
            break
    return first


def _split_head(doc: Document) -> None:
    doc.body = doc.text
    lines = doc.text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if _MARKER.match(line):
            if _MARKER_ONLY.match(line):
                doc.head, doc.body = "".join(lines[:i + 1]), "".join(lines[i + 1:])
            else:  # content on the marker line (`--- {a: 1}`): parse it with the marker
                doc.head, doc.body = "".join(lines[:i]), "".join(lines[i:])
            break
        if not line.startswith("%"):
            break
    lines = doc.body.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if _END.match(line):
            doc.body, doc.tail = "".join(lines[:i]), "".join(lines[i:])
            break


def _yaml(mapping: int = 2, sequence: int = 2, offset: int = 0) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long string onto a second line
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def parse(doc: Document) -> None:
    """Fill `doc.data` from its body; DocumentError names the input line of a syntax error."""
    try:
        doc.data = _yaml().load(doc.body)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = doc.body_line + (mark.line if mark is not None else 0)
        raise DocumentError(line, f"invalid YAML: {err.problem or err.context}") from None
    except YAMLError as err:
        raise DocumentError(doc.body_line, f"invalid YAML: {err}") from None


def dump(doc: Document) -> str:
    """The document's (changed) data as YAML, after its verbatim head, in the chunk's own indentation."""
    mapping, offset = guess_indent(doc.body)
    out = io.StringIO()
    _yaml(mapping, offset + 2, offset).dump(doc.data, out)
    head = doc.head if doc.head.endswith("\n") or not doc.head else doc.head + "\n"
    if not head and doc.body.lstrip().startswith("---"):
        head = "---\n"  # content was on the marker line; the marker goes on its own line
    return head + out.getvalue() + doc.tail


def guess_indent(text: str) -> tuple[int, int]:
    """(mapping indent, dash offset of block sequences) as written in `text`; (2, 0) when unknown.

    Kubernetes YAML comes in two common styles: `kubectl` writes `- ` level with the
    parent key (offset 0), Helm charts and many hand-written files indent it by two.
    """
    mapping = offset = None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for parent, child in zip(lines, lines[1:]):
        key = _KEY_LINE.match(parent)
        if key is None:
            continue
        key_col = len(parent) - len(parent.lstrip(" -"))
        child_col = len(child) - len(child.lstrip(" "))
        if child.lstrip().startswith("- "):
            if offset is None and child_col >= key_col:
                offset = child_col - key_col
        elif mapping is None and child_col > key_col:
            mapping = child_col - key_col
        if mapping is not None and offset is not None:
            break
    return mapping or 2, max(offset or 0, 0)
