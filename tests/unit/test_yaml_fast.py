"""The libyaml fast path gives exactly ruamel.yaml's documents, or steps aside."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from remora.config import yaml_fast, yaml_text

ROOT = Path(__file__).resolve().parents[2]


def reference(text: str) -> list:
    """ruamel.yaml's reading, the reference (the fast path bypassed)."""
    return list(yaml_text._reader().load_all(text))


def typed(value):
    """The value with every scalar's type spelled out (True == 1 and 1 == 1.0 in Python)."""
    if isinstance(value, dict):
        return ("map", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("seq", [typed(v) for v in value])
    return (type(value).__name__, value)


def repository_yaml() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.yaml", "*.yml"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return [ROOT / name for name in listed]


def test_every_yaml_file_of_the_repository_reads_the_same():
    """Samples, fixtures and deploy manifests: the fast path's documents equal ruamel.yaml's, and it
    takes most of them (it would be pointless otherwise)."""
    taken = 0
    for path in repository_yaml():
        text = path.read_text()
        fast = yaml_fast.load_all(text)
        if fast is None:
            continue
        taken += 1
        assert typed(fast) == typed(reference(text)), path
    assert taken >= len(repository_yaml()) * 3 // 4


@pytest.mark.parametrize("text", [
    "a: yes\nb: no\nc: on\nd: off\ne: y\n",           # YAML 1.1 booleans are strings in 1.2
    "a: 1:30\nb: 0:0:1\n",                            # no sexagesimal
    "a: 42\nb: -3\nc: +7\nd: 0\ne: 0.5\nf: -1.25\ng: true\nh: False\ni: ~\nj: null\nk:\n",
    "a: '017'\nb: \"yes\"\nc: !!str 5\n",
    "a: |\n  line one\n  line two\n\nb: >-\n  folded\n  text\nc: \"esc \\t \\u00e9 \\x41 \\/\"\n",
    "- &x {a: 1}\n- *x\n",
    "---\n---\na: 1\n...\n---\n",
    "a:\n  - b: [1, 2.5, x]\n    c: {d: e}\n",
])
def test_texts_it_takes_read_the_same(text):
    """Plain documents: same values and types as ruamel.yaml."""
    fast = yaml_fast.load_all(text)
    assert fast is not None
    assert typed(fast) == typed(reference(text))


@pytest.mark.parametrize("text", [
    "a: 017\n", "a: 0o17\n", "a: 0x1f\n", "a: 1_000\n", "a: 1e3\n", "a: .inf\n", "a: 1.\n",
    "a: 2024-01-01\n",                                  # timestamps
    "a: 1\na: 2\n",                                     # duplicate key (ruamel.yaml refuses it)
    "x: &a {k: 1}\ny:\n  <<: *a\n",                     # merge key
    "addresses: [1.2.3.4, 001:db8::]\n",                # YAML 1.2 syntax libyaml refuses
    "%YAML 1.1\n---\na: yes\n",
    "a: b\x85c\n",                                       # NEL: a line break in YAML 1.1 only
    "a: !!binary aGk=\n", "a: !local 1\n", "a: !!bool yes\n", "a: !!int 0x10\n",
    "a: [\n",                                           # not YAML at all: ruamel.yaml's error
])
def test_texts_that_need_ruamel_are_left_to_it(text):
    """Each YAML 1.1/1.2 difference, rarer spelling or error: the fast path steps aside."""
    assert yaml_fast.load_all(text) is None


def test_load_all_still_reports_ruamels_errors_with_lines():
    """An error in a text goes through ruamel.yaml: the same message and line as before."""
    with pytest.raises(yaml_text.YamlSyntaxError, match=r"duplicate key 'a' \(line 2"):
        list(yaml_text.load_all("a: 1\na: 2\n"))


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=12))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(documents, st.sampled_from(["ruamel", "pyyaml-block", "pyyaml-flow"]))
def test_any_dumped_document_reads_the_same_or_is_left_to_ruamel(document, writer):
    """Random documents written by either library, in block or flow style: equal to ruamel.yaml's reading."""
    if writer == "ruamel":
        text = yaml_text.dump(document)
    else:
        text = yaml.safe_dump(document, default_flow_style=writer == "pyyaml-flow", allow_unicode=True)
    fast = yaml_fast.load_all(text)
    if fast is not None:
        assert typed(fast) == typed(reference(text)), text


def test_resolver_copy_is_ruamels_yaml_1_2_table():
    """yaml_fast's copy of the YAML 1.2 resolvers equals ruamel.yaml's (tags, patterns, first
    characters), and ruamel.yaml too compiles every pattern that has whitespace with re.X."""
    import re

    from ruamel.yaml.resolver import implicit_resolvers
    theirs = [(tag, regexp, first) for versions, tag, regexp, first in implicit_resolvers if (1, 2) in versions]
    assert list(yaml_fast.YAML_1_2_RESOLVERS) == [(tag, regexp.pattern, first) for tag, regexp, first in theirs]
    for _, regexp, _ in theirs:   # re.X changes nothing in a pattern without whitespace
        assert regexp.flags & re.X or not any(c.isspace() for c in regexp.pattern)
