"""Reading Julia sources without Julia: syntax errors and the names they use (tree-sitter-julia).

Also a command: `python tests/julia/jlsyntax.py FILE.jl ...` prints each syntax error and exits 1
if there is one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import tree_sitter_julia
from tree_sitter import Language, Node, Parser

PARSER = Parser(Language(tree_sitter_julia.language()))


def parse(source: bytes) -> Node:
    return PARSER.parse(source).root_node


def syntax_problems(source: bytes, label: str = "<source>") -> list[str]:
    """`label:line:col: ERROR ...` for every error or missing node."""
    out, stack = [], [parse(source)]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            row, col = node.start_point
            kind = f"MISSING {node.type}" if node.is_missing else "ERROR"
            out.append(f"{label}:{row + 1}:{col + 1}: {kind}: {source[node.start_byte : node.end_byte][:60]!r}")
        if node.has_error:
            stack.extend(node.children)
    return sorted(out)


def walk(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def text(node: Node) -> str:
    return node.text.decode()


def imports(root: Node) -> list[tuple[str, list[str] | None]]:
    """(module, names) per `using`/`import`; names is None for a whole-module `using X`.
    Relative imports (`using .PyODE`) are left out."""
    found = []
    for node in walk(root):
        if node.type not in ("using_statement", "import_statement"):
            continue
        for child in node.children:
            if child.type == "selected_import":
                idents = [c for c in child.children if c.type == "identifier"]
                found.append((text(idents[0]), [text(c) for c in idents[1:]]))
            elif child.type == "identifier":
                found.append((text(child), None))
    return found


def qualified_names(root: Node, modules: set[str]) -> set[tuple[str, str]]:
    """(module, name) for every `Module.name` whose left side is one of `modules`."""
    found = set()
    for node in walk(root):
        if node.type != "field_expression":
            continue
        parts = [c for c in node.children if c.type == "identifier"]
        if len(parts) == 2 and text(parts[0]) in modules:
            found.add((text(parts[0]), text(parts[1])))
    return found


def field_accesses(root: Node) -> set[str]:
    """The right side of every `x.name`."""
    found = set()
    for node in walk(root):
        if node.type == "field_expression":
            parts = [c for c in node.children if c.type == "identifier"]
            if len(parts) == 2:
                found.add(text(parts[1]))
    return found


def _callee(node: Node) -> str | None:
    """The name defined by a function signature or short-form definition's left side."""
    if node.type == "signature":
        node = node.children[0]
    if node.type == "where_expression":
        node = node.children[0]
    if node.type == "typed_expression":  # f(x)::T = ...
        node = node.children[0]
    if node.type == "call_expression":
        head = node.children[0]
        if head.type == "identifier":
            return text(head)
    return None


def module_definitions(root: Node) -> set[str]:
    """Names a module's top level defines: functions (long and short form), consts, structs."""
    names = set()
    for module in (n for n in walk(root) if n.type == "module_definition"):
        for item in module.children:
            node = item.children[1] if item.type == "const_statement" else item
            if node.type == "function_definition":
                sig = next((c for c in node.children if c.type == "signature"), None)
                name = _callee(sig) if sig is not None else None
            elif node.type == "assignment":
                lhs = node.children[0]
                name = text(lhs) if lhs.type == "identifier" else _callee(lhs)
            elif node.type == "struct_definition":
                head = next(c for c in node.children if c.type == "type_head")
                ident = next(n for n in walk(head) if n.type == "identifier")
                name = text(ident)
            else:
                name = None
            if name:
                names.add(name)
    return names


def keyword_parameters(root: Node, function: str) -> set[str]:
    """Keyword parameter names (after `;`) of the long-form definition of `function`."""
    for node in walk(root):
        if node.type != "function_definition":
            continue
        sig = next((c for c in node.children if c.type == "signature"), None)
        if sig is None or _callee(sig) != function:
            continue
        call = sig.children[0]
        args = next(c for c in call.children if c.type == "argument_list")
        names, after_semicolon = set(), False
        for child in args.children:
            if child.type == ";":
                after_semicolon = True
            elif after_semicolon and child.type not in (",", ")"):
                ident = next(n for n in walk(child) if n.type == "identifier")
                names.add(text(ident))
        return names
    raise LookupError(f"no long-form definition of {function}")


def return_arity(root: Node, signature: str) -> int:
    """The number of values the last `return (a, b, ...)` of a long-form function returns; the
    function is the first whose signature starts with `signature` (e.g. "solve_forward(")."""
    for node in walk(root):
        if node.type != "function_definition":
            continue
        sig = next((c for c in node.children if c.type == "signature"), None)
        if sig is None or not text(sig).startswith(signature):
            continue
        returns = [n for n in walk(node) if n.type == "return_statement"]
        value = returns[-1].children[1]
        if value.type != "tuple_expression":
            return 1
        return sum(1 for c in value.children if c.type not in ("(", ")", ","))
    raise LookupError(f"no long-form definition starting {signature}")


def dict_items(root: Node, const: str) -> list[tuple[str, str]]:
    """(key, value source) of `const NAME = Dict{...}("key" => value, ...)`; keys are string literals."""
    for node in walk(root):
        if node.type != "const_statement":
            continue
        assignment = node.children[1]
        if text(assignment.children[0]) != const:
            continue
        call = assignment.children[2]
        args = next(c for c in call.children if c.type == "argument_list")
        items = []
        for pair in (c for c in args.children if c.type == "binary_expression"):
            key, value = pair.children[0], pair.children[-1]
            if key.type != "string_literal":
                raise ValueError(f"{const}: a key that is not a string literal: {text(key)}")
            items.append((text(key).strip('"'), text(value)))
        return items
    raise LookupError(f"no const {const}")


def dict_keys(root: Node, const: str) -> list[str]:
    """The string keys of `const NAME = Dict{...}("key" => value, ...)`."""
    return [key for key, _ in dict_items(root, const)]


if __name__ == "__main__":
    bad = [p for f in sys.argv[1:] for p in syntax_problems(Path(f).read_bytes(), f)]
    print("\n".join(bad) or f"{len(sys.argv) - 1} file(s) parse cleanly")
    sys.exit(1 if bad else 0)
