"""MkDocs hook: every public name of `pyode/__init__.py` must have an entry (`::: pyode.NAME`) in
docs/api.md, so that a name added to the package without documentation fails `mkdocs build --strict`.

The public names are `__all__` when the module defines it, else the explicit re-exports
(`from .x import Name as Name`, `from . import mod as mod`). Read with `ast`: nothing is imported.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.pyode_api_check")


def public_names(init: Path) -> list[str]:
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return [str(v) for v in ast.literal_eval(node.value)]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names += [a.asname for a in node.names if a.asname and a.asname == a.name and not a.name.startswith("_")]
    return names


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != "api.md":
        return markdown
    init = Path(config["config_file_path"]).parent / "pyode" / "__init__.py"
    documented = set(re.findall(r"^::: pyode\.([A-Za-z_][A-Za-z0-9_]*)", markdown, flags=re.MULTILINE))
    missing = [name for name in public_names(init) if name not in documented]
    if missing:
        log.warning("api.md has no '::: pyode.NAME' entry for these public names of pyode: %s", ", ".join(missing))
    return markdown
