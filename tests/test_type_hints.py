"""Public functions and methods of mpc_ml carry type hints (the package ships py.typed).

Walks every .py file under mpc_ml/ with ``ast``. A public function is a module-level
function or a method of a (possibly nested) class whose name does not start with ``_``,
plus ``__init__`` and ``__call__``. Functions nested inside functions are skipped.
Each must annotate every parameter except ``self``/``cls`` (``*args``/``**kwargs`` may
stay bare) and its return (``__init__`` excepted).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mpc_ml"
DUNDERS = {"__init__", "__call__"}
FuncDef = (ast.FunctionDef, ast.AsyncFunctionDef)


def _is_public(name: str) -> bool:
    return not name.startswith("_") or name in DUNDERS


def _functions(body: list[ast.stmt], in_class: bool):
    """Yield (qualified name, node, is_method) for public functions of a module/class body."""
    for node in body:
        if isinstance(node, FuncDef):
            if _is_public(node.name):
                yield node.name, node, in_class
        elif isinstance(node, ast.ClassDef):
            for name, fn, is_method in _functions(node.body, True):
                yield f"{node.name}.{name}", fn, is_method
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            # definitions under `if TYPE_CHECKING:` / try-import blocks still count
            blocks = [node.body, getattr(node, "orelse", [])]
            blocks += [h.body for h in getattr(node, "handlers", [])]
            blocks.append(getattr(node, "finalbody", []))
            for block in blocks:
                yield from _functions(block, in_class)


def _missing(fn: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    if is_method and not static and positional and positional[0].arg in ("self", "cls", "mcs"):
        positional = positional[1:]
    missing = [a.arg for a in [*positional, *args.kwonlyargs] if a.annotation is None]
    if fn.returns is None and fn.name != "__init__":
        missing.append("return")
    return missing


def unannotated(root: Path = PACKAGE) -> list[str]:
    """Every public function lacking a hint, as 'path/to/file.py:Class.method (params)'."""
    out = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root.parent).as_posix()
        for qual, fn, is_method in _functions(tree.body, False):
            missing = _missing(fn, is_method)
            if missing:
                out.append(f"{rel}:{qual} ({', '.join(missing)})")
    return out


def test_checker_finds_missing_hints(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "def ok(a: int, *args, **kw) -> int: ...\n"
        "def bad(a, b: int): ...\n"
        "def _private(a): ...\n"
        "def outer() -> None:\n"
        "    def inner(x): ...\n"
        "class C:\n"
        "    def __init__(self, x): ...\n"
        "    def __call__(self, x: int): ...\n"
        "    def __repr__(self): ...\n"
        "    @staticmethod\n"
        "    def s(self) -> None: ...\n"
        "    @classmethod\n"
        "    def c(cls) -> None: ...\n"
        "    class D:\n"
        "        def m(self, y) -> None: ...\n"
    )
    assert unannotated(pkg) == [
        "pkg/m.py:bad (a, return)",
        "pkg/m.py:C.__init__ (x)",
        "pkg/m.py:C.__call__ (return)",
        "pkg/m.py:C.s (self)",
        "pkg/m.py:C.D.m (y)",
    ]


def test_public_functions_have_type_hints() -> None:
    missing = unannotated()
    if missing:
        pytest.fail(f"{len(missing)} public function(s) lack type hints "
                    "(file:function (what is missing)):\n  " + "\n  ".join(missing), pytrace=False)
