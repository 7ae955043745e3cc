"""A griffe extension (loaded by mkdocstrings, see mkdocs.yml) that adapts two habits of pyode's
docstrings to the Google style griffe parses, without editing the package:

- one entry documenting several parameters, `rtol, atol: the tolerances.`, becomes one entry
  per name with the same description (griffe would otherwise warn that no parameter is called
  "rtol, atol", and strict builds fail);
- an indexed expression written as plain text, `a[i][0..i-1]`, is put in backticks, since
  Markdown reads `[i][0..i-1]` as a reference link.

Only the rendered documentation changes; the docstrings in pyode/ stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

PARAM_SECTION = re.compile(
    r"^(\s*)(Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments|Other Parameters):\s*$"
)
ANY_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
JOINT_ENTRY = re.compile(r"^(\s*)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*\([^)]*\))?:(.*)$")
INDEXED = re.compile(r"(?<![`\w])(\w+(?:\[[^\]\s`]*\]){2,})")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_joint_entries(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    section_indent: int | None = None
    entry_indent: int | None = None
    while i < len(lines):
        line = lines[i]
        header = PARAM_SECTION.match(line)
        if header:
            section_indent, entry_indent = len(header.group(1)), None
            out.append(line)
            i += 1
            continue
        if section_indent is not None and line.strip():
            if entry_indent is None:
                entry_indent = _indent(line)
            if _indent(line) < entry_indent or (_indent(line) <= section_indent and ANY_SECTION.match(line)):
                section_indent = entry_indent = None  # the section ended
        match = JOINT_ENTRY.match(line) if section_indent is not None and _indent(line) == entry_indent else None
        if not match:
            out.append(line)
            i += 1
            continue
        lead, names, annotation, description = match.groups()
        body = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > entry_indent):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            i -= 1
            body.pop()
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{lead}{name}{annotation or ''}:{description}")
            out.extend(body)
    return "\n".join(out)


def quote_indexed(text: str) -> str:
    parts = text.split("`")
    for k in range(0, len(parts), 2):  # outside inline code only
        parts[k] = INDEXED.sub(r"`\1`", parts[k])
    return "`".join(parts)


class PyodeDocstrings(griffe.Extension):
    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = quote_indexed(split_joint_entries(obj.docstring.value))
