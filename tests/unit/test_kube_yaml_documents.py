"""Splitting multi-document YAML into chunks that keep their text, and re-dumping in the chunk's style."""
from __future__ import annotations

import pytest

from remora.kube.yaml_documents import DocumentError, dump, guess_indent, parse, split_documents


def test_chunks_join_back_to_the_exact_input():
    """The chunks cover the input with nothing lost or added: comments, blank and marker lines."""
    text = "# head\n---\na: 1\n--- # second\nb: 2\n...\n# c\n%YAML 1.2\n---\nc: 3"
    docs = split_documents(text)
    assert "".join(d.text for d in docs) == text
    assert [d.line for d in docs] == [1, 2, 4, 8]
    assert docs[3].head == "%YAML 1.2\n---\n"
    for doc in docs:
        parse(doc)
    assert [d.data for d in docs] == [None, {"a": 1}, {"b": 2}, {"c": 3}]


def test_directives_stay_with_the_document_they_precede():
    """A %YAML line belongs to the next document's head, so that document parses on its own."""
    doc = split_documents("%YAML 1.2\n---\na: 1\n")[0]
    assert doc.head == "%YAML 1.2\n---\n"
    parse(doc)
    assert doc.data == {"a": 1}


def test_marker_inside_a_longer_word_is_not_a_separator():
    """`---foo` is content, not a document marker."""
    assert len(split_documents("a: |\n  x\n---foo: 1\n")) == 1


def test_syntax_error_line_is_counted_in_the_whole_input():
    """The line of a YAML error is the line in the file, not in the document."""
    doc = split_documents("a: 1\n---\nb: 2\nc: [\n")[1]
    with pytest.raises(DocumentError) as err:
        parse(doc)
    assert err.value.line == 5


def test_dump_keeps_the_marker_line_comments_and_end_marker():
    """A re-dumped document keeps its `---` line verbatim, its comments and its `...` tail."""
    doc = split_documents("x: 0\n--- # the app\n# about b\nb:\n  - 1   # one\n...\n# after\n")[1]
    parse(doc)
    doc.data["c"] = 2
    assert dump(doc) == "--- # the app\n# about b\nb:\n  - 1   # one\nc: 2\n...\n# after\n"


@pytest.mark.parametrize("text, expected", [
    ("a:\n  b:\n  - 1\n", (2, 0)),        # kubectl style
    ("a:\n    b:\n      - 1\n", (4, 2)),  # four-space maps, indented dashes
    ("spec:\n  containers:\n    - name: x\n      ports:\n        - 1\n", (2, 2)),
    ("a: 1\n", (2, 0)),                   # nothing nested: the defaults
])
def test_guess_indent(text, expected):
    """The mapping indent and the dash offset are read from the document's own text."""
    assert guess_indent(text) == expected
