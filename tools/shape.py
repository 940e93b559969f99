"""The server's shape, checked by `make check` beside import-linter's contracts: no module
over 400 lines, no class over 25 methods, no function over 50 lines, and no module reaching
into another's private names (`other._name`, `from .x import _name`). One line per breach;
exit status 1 if there is any.

    python tools/shape.py [package directory ...]    (default: tools/intercom_server)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_METHODS = 25
MAX_FUNCTION_LINES = 50
#: Whose private names are anyone's to touch: the object itself, its class, and the few
#: libraries whose documented API has underscores (a namedtuple's `_replace`, `sys._getframe`).
OWN = {"self", "cls", "super"}
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_exit"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def breaches(path: Path) -> list[str]:
    text = path.read_text()
    tree = ast.parse(text, str(path))
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{path}: {lines} lines, more than {MAX_MODULE_LINES}: split it by idea")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            if len(methods) > MAX_METHODS:
                found.append(f"{path}:{node.lineno}: class {node.name} has {len(methods)} methods, more than "
                             f"{MAX_METHODS}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path}:{node.lineno}: {node.name}() is {length} lines, more than {MAX_FUNCTION_LINES}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in PUBLIC_UNDERSCORED:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in OWN) and not (
                    isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"):
                found.append(f"{path}:{node.lineno}: reaches into another object's private '{node.attr}'")
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{path}:{node.lineno}: imports the private '{alias.name}' of {node.module}")
    return found


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path(__file__).parent / "intercom_server"]
    found = [b for root in roots for path in sorted(root.rglob("*.py")) for b in breaches(path)]
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
