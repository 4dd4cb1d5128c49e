"""README.md's runnable blocks, as a test runs them.

A fenced block preceded by `<!-- README test: NAME [FILE] -->` belongs to the test NAME;
with FILE, the block is that file's content (the test writes it), else it is shell run
as written. In shell blocks:
- backslash continuations are joined into one command;
- `cmd   # => TEXT` means cmd's output must contain TEXT: the runner checks it and stops with
  the README line when it does not (the comment is what a reader sees, so it cannot drift);
- everything else runs under `set -euo pipefail`: a failing command fails the block.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MARKER = re.compile(r"^<!-- README test: (\S+)(?: (\S+))? -->\n```(\w+)\n(.*?)^```$", re.M | re.S)
EXPECT = re.compile(r"\s+# => (.+)$")


@dataclass
class Block:
    name: str        # the test it belongs to
    file: str | None  # the file it is the content of, or None for shell
    text: str
    line: int        # where the block starts in README.md


def blocks(text: str | None = None) -> list[Block]:
    text = README.read_text() if text is None else text
    return [Block(m.group(1), m.group(2), m.group(4), text.count("\n", 0, m.start()) + 3)
            for m in MARKER.finditer(text)]


def commands(block: Block) -> list[tuple[int, str]]:
    """(README line, command) per shell command, continuation lines joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
        if line.rstrip().endswith("\\") and "#" not in line:
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return [(n, c) for n, c in out if c.strip() and not c.lstrip().startswith("#")]


def to_shell(block: Block) -> str:
    """The block as a bash script that checks each `# => TEXT` and names the README line it fails on."""
    lines = []
    for number, command in commands(block):
        expect = EXPECT.search(command)
        if expect is None:
            lines.append(f"echo '+ README.md:{number}' >&2")
            lines.append(command)
            continue
        cmd, wanted = command[:expect.start()], expect.group(1).strip()
        lines.append(f"echo '+ README.md:{number}' >&2")
        lines.append(f"out=$({cmd})")
        lines.append('printf "%s\\n" "$out"')
        lines.append(f"grep -qF -- {shlex.quote(wanted)} <<<\"$out\" || "
                     f"{{ echo {shlex.quote(f'README.md:{number}: expected {wanted!r} in the output')} >&2; exit 1; }}")
    return "\n".join(lines) + "\n"
