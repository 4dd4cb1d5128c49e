"""libyaml's speed for the YAML that does not need ruamel.yaml's YAML 1.2 rules.

ruamel.yaml's pure-Python loader (yaml_text.py says why it is the reference) reads about
1 MB/s: a --config-dir of 10,000 ServiceEntries took a control replica four minutes to
start. PyYAML's C loader reads the same text twenty times faster, but implements YAML 1.1.
This module lets it read a text only when the result is certain to be ruamel.yaml's own,
and gives up (None: ruamel.yaml reads the text, errors included) otherwise:

- Plain scalars are resolved with ruamel.yaml's YAML 1.2 resolver table (a copy, below, so
  that reading a sidecar's config does not load ruamel.yaml; a test holds it equal to
  ruamel.yaml's own), so `yes`, `on`, `1:30` stay strings; a scalar resolved to an int, float or bool is built here only
  in its simplest spelling (`42`, `-3`, `0.5`, `true`), anything else (`017`, `0x1f`,
  `1_000`, `1e3`, `.inf`, timestamps, explicit tags other than str/int/float/bool/null/
  seq/map) gives up.
- Duplicate keys, merge keys (`<<`) and `=` give up (ruamel.yaml refuses duplicates with
  the line; merges are rare enough to leave to it).
- Texts with a `%YAML` directive or with the characters YAML 1.1 alone takes as line breaks
  (NEL, LS, PS) give up, and so does any text libyaml refuses (YAML 1.2 syntax such as
  `[1.2.3.4, 001:db8::]`).

tests/unit/test_yaml_fast.py holds both loaders to the same result on every YAML file of the
repository and on each rule above.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\.[0-9]+")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_YAML_11_LINE_BREAKS = ("\x85", "\u2028", "\u2029")

# ruamel.yaml.resolver.implicit_resolvers, the entries for YAML 1.2: (tag, regexp, first
# characters). Copied: importing ruamel.yaml costs a sidecar 2 MiB of RSS it never needs when
# libyaml reads its config (tests/unit/test_yaml_fast.py checks the copy against ruamel.yaml).
# Compiled with re.X (and re.U, the default for str patterns), as ruamel.yaml's RegExp does.
YAML_1_2_RESOLVERS = (
    ("tag:yaml.org,2002:bool", "^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:float", """^(?:
         [-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\\.(?:inf|Inf|INF)
        |\\.(?:nan|NaN|NAN))$""", list("-+0123456789.")),
    ("tag:yaml.org,2002:int", """^(?:[-+]?0b[0-1_]+
        |[-+]?0o?[0-7_]+
        |[-+]?[0-9_]+
        |[-+]?0x[0-9a-fA-F_]+)$""", list("-+0123456789")),
    ("tag:yaml.org,2002:merge", "^(?:<<)$", ["<"]),
    ("tag:yaml.org,2002:null", """^(?: ~
        |null|Null|NULL
        | )$""", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:timestamp", """^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]
        |[0-9][0-9][0-9][0-9] -[0-9][0-9]? -[0-9][0-9]?
        (?:[Tt]|[ \\t]+)[0-9][0-9]?
        :[0-9][0-9] :[0-9][0-9] (?:\\.[0-9]*)?
        (?:[ \\t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$""", list("0123456789")),
    ("tag:yaml.org,2002:value", "^(?:=)$", ["="]),
    ("tag:yaml.org,2002:yaml", "^(?:!|&|\\*)$", ["!", "&", "*"]),
)


class _GiveUp(Exception):
    """The text needs ruamel.yaml."""


@functools.cache
def _reader() -> Callable[[str], Any] | None:
    """yaml.load_all with the loader below, made at first use (a sidecar fed by the control
    server never reads YAML, and PyYAML is one more megabyte); None without libyaml."""
    try:
        import yaml
        from yaml import CSafeLoader
    except ImportError:    # PyYAML without libyaml: ruamel.yaml reads everything
        return None

    class Loader(CSafeLoader):
        """libyaml's parser, ruamel.yaml's YAML 1.2 resolution, and only the simplest values."""

        yaml_implicit_resolvers: dict = {}

        def flatten_mapping(self, node) -> None:
            if any(key.tag in ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value") for key, _ in node.value):
                raise _GiveUp("merge or value key")

        def construct_mapping(self, node, deep: bool = False) -> dict:
            if not isinstance(node, yaml.MappingNode):
                raise _GiveUp("not a mapping")
            self.flatten_mapping(node)
            mapping: dict = {}
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in mapping:
                        raise _GiveUp("duplicate key")
                except TypeError:
                    raise _GiveUp("unhashable key") from None
                mapping[key] = self.construct_object(value_node, deep=deep)
            return mapping

    for tag, pattern, first in YAML_1_2_RESOLVERS:
        Loader.add_implicit_resolver(tag, re.compile(pattern, re.X), first)

    def scalar(node) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise _GiveUp("not a scalar")
        return node.value

    def simplest(pattern: re.Pattern, convert: Callable[[str], Any]) -> Callable:
        def construct(loader, node) -> Any:
            value = scalar(node)
            if not pattern.fullmatch(value):
                raise _GiveUp(f"{node.tag} {value!r}")
            return convert(value)
        return construct

    def boolean(loader, node) -> bool:
        value = scalar(node)
        if value not in _BOOL:
            raise _GiveUp(f"bool {value!r}")
        return _BOOL[value]

    def null(loader, node) -> None:
        if scalar(node) not in _NULL:
            raise _GiveUp("null")
        return None

    def give_up(loader, node) -> Any:
        raise _GiveUp(node.tag)

    Loader.yaml_constructors = {
        "tag:yaml.org,2002:str": CSafeLoader.yaml_constructors["tag:yaml.org,2002:str"],
        "tag:yaml.org,2002:seq": CSafeLoader.yaml_constructors["tag:yaml.org,2002:seq"],
        "tag:yaml.org,2002:map": CSafeLoader.yaml_constructors["tag:yaml.org,2002:map"],
        "tag:yaml.org,2002:int": simplest(_INT, int),
        "tag:yaml.org,2002:float": simplest(_FLOAT, float),
        "tag:yaml.org,2002:bool": boolean,
        "tag:yaml.org,2002:null": null,
        None: give_up,      # every other tag: timestamps, binary, sets, local tags
    }
    return functools.partial(yaml.load_all, Loader=Loader)


def load_all(text: str) -> list[Any] | None:
    """Every document of `text` as ruamel.yaml would give them, or None: let ruamel.yaml read it."""
    if "%YAML" in text or any(c in text for c in _YAML_11_LINE_BREAKS):
        return None
    read_all = _reader()
    if read_all is None:
        return None
    try:
        return list(read_all(text))
    except Exception:   # noqa: BLE001  anything libyaml or the rules above refuse: ruamel.yaml decides
        return None

