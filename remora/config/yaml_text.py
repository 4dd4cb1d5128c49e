"""The one YAML library of the `remora` package: ruamel.yaml, for reading config and writing it.

Why ruamel.yaml and not PyYAML: Kubernetes reads manifests with go-yaml, whose scanner
follows YAML 1.2 where the two versions differ on syntax: a `:` inside a plain scalar in a
flow list is part of the scalar (`addresses: [1.2.3.4, 001:db8::]`, Istio's own
ServiceEntry validation fixture). PyYAML and libyaml implement YAML 1.1 and refuse that
document ("found unexpected ':'"); ruamel.yaml implements YAML 1.2, and `remora inject`
already needs it for round-trip editing that keeps comments. So config is parsed by
ruamel.yaml's pure-Python safe loader (its C loader is libyaml, i.e. YAML 1.1 again), which
also refuses duplicate keys, and dumped by the same library.

YAML 1.2 rules that follow: `yes`/`no`/`on`/`off` are strings, `0o17` is octal and `017`
is decimal seventeen, `1:30` is a string (YAML 1.1 made it sexagesimal 90).

Reading is fast where it can be: yaml_fast.py lets libyaml read a text when the documents
are certain to be the ones ruamel.yaml would give (twenty times faster), and steps aside
otherwise; ruamel.yaml stays the reference and reports every error.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from remora.config import yaml_fast

if TYPE_CHECKING:
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import YAMLError

# ruamel.yaml (2 MiB of RSS) is imported by the functions that need it: a sidecar whose
# config libyaml reads (yaml_fast.py) never loads it.
__all__ = ["YAMLError", "YamlSyntaxError", "dump", "dump_all", "load_all"]


class YamlSyntaxError(ValueError):
    """A document that is not valid YAML: what is wrong and where (1-based line and column)."""

    def __init__(self, problem: str, line: int | None, column: int | None) -> None:
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{problem}{where}")
        self.problem, self.line, self.column = problem, line, column


def _reader():
    # A new instance per call: a YAML object keeps parser state and is not thread-safe,
    # and the control server validates in worker threads.
    from ruamel.yaml import YAML
    return YAML(typ="safe", pure=True)


def __getattr__(name: str):
    if name == "YAMLError":   # re-exported, loaded on first use as the rest of ruamel.yaml
        from ruamel.yaml.error import YAMLError
        return YAMLError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_all(text: str) -> Iterator[Any]:
    """Each document of a multi-document text, as plain dicts / lists / scalars.

    Raises YamlSyntaxError at the first document that does not parse (documents before it
    have been yielded), with the line of the problem.
    """
    fast = yaml_fast.load_all(text)   # libyaml, when the result is certain to be the same
    if fast is not None:
        yield from fast
        return
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError
    try:
        yield from _reader().load_all(text)
    except DuplicateKeyError as error:
        mark = error.problem_mark
        key = _duplicate_key(error)
        raise YamlSyntaxError(f"duplicate key {key!r}" if key is not None else "duplicate key",
                              mark.line + 1 if mark else None, mark.column + 1 if mark else None) from None
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        raise YamlSyntaxError(error.problem or error.context or "invalid YAML",
                              mark.line + 1 if mark else None, mark.column + 1 if mark else None) from None
    except YAMLError as error:
        raise YamlSyntaxError(str(error).splitlines()[0] if str(error) else "invalid YAML", None, None) from None


def _duplicate_key(error: DuplicateKeyError) -> str | None:
    # ruamel words it: found duplicate key "hosts" with value "..." (original value: "...")
    problem = error.problem or ""
    start = problem.find('"')
    end = problem.find('"', start + 1)
    return problem[start + 1:end] if 0 <= start < end else None


@functools.cache
def _representer() -> type:
    """The dump representer class, made at first use (ruamel.yaml is imported then)."""
    from ruamel.yaml.nodes import ScalarNode
    from ruamel.yaml.representer import SafeRepresenter
    from ruamel.yaml.resolver import VersionedResolver

    yaml_1_1 = VersionedResolver(version=(1, 1))
    str_tag = "tag:yaml.org,2002:str"

    class Representer(SafeRepresenter):
        """Quotes a string that a YAML 1.1 reader would take for something else (`yes`, `on`,
        `1:30`, `010`): what `remora get -o yaml` prints is often piped to tools on PyYAML or
        go-yaml v2 (kubectl), which resolve plain scalars by YAML 1.1."""

        def represent_str(self, data: str) -> Any:
            if yaml_1_1.resolve(ScalarNode, data, (True, False)) != str_tag:
                return self.represent_scalar(str_tag, data, style="'")
            return super().represent_str(data)

    Representer.add_representer(str, Representer.represent_str)
    return Representer


def _writer():
    from ruamel.yaml import YAML
    writer = YAML(typ="safe", pure=True)
    writer.Representer = _representer()
    writer.default_flow_style = False
    writer.sort_base_mapping_type_on_output = False   # keep the document's own key order
    writer.width = 4096   # never fold a long string onto a second line
    return writer


def dump(document: Any) -> str:
    """One document as block-style YAML, keys in their order."""
    out = io.StringIO()
    _writer().dump(document, out)
    return out.getvalue()


def dump_all(documents: list[Any]) -> str:
    """Several documents separated by `---`."""
    out = io.StringIO()
    _writer().dump_all(documents, out)
    return out.getvalue()
