"""Protocol specs: load protocols/<name>.toml and evaluate its cost formulas.

A spec's formulas are plain arithmetic over named sizes (``"8 * (n - 1) * numel"``);
``evaluate`` computes them exactly (integers and fractions, no floats) after parsing
with ``ast``, so a spec file can never run code.
"""
from __future__ import annotations

import ast
import os
import re
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

_NAME = re.compile(r"[a-z0-9_]+")
_MAX_EXPONENT = 4096
_MAX_RESULT_BITS = 1 << 16
_MAX_FORMULA_CHARS = 2000
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Div, ast.Pow)


def protocols_dir(directory: str | os.PathLike | None = None) -> Path:
    """The specs folder: the argument, else $MPC_PROTOCOLS_DIR, else the package's own copy
    (mpc_ml/protocols: package data in a wheel, a link to the checkout's protocols/ here)."""
    if directory is not None:
        return Path(directory)
    env = os.environ.get("MPC_PROTOCOLS_DIR")
    if env:
        return Path(env)
    return Path(str(resources.files("mpc_ml") / "protocols"))


def load_spec(name: str, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The parsed spec protocols/<name>.toml."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad spec name {name!r}: use lower-case letters, digits and _")
    path = protocols_dir(directory) / f"{name}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no protocol spec {path}")
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _eval(node: ast.AST, sizes: dict[str, int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body, sizes)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.Name):
        if node.id not in sizes:
            raise ValueError(f"unknown name {node.id!r} in formula (given: {sorted(sizes)})")
        return Fraction(sizes[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand, sizes)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        left, right = _eval(node.left, sizes), _eval(node.right, sizes)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, (ast.Div, ast.FloorDiv)) and right == 0:
            raise ValueError("division by zero in formula")
        if isinstance(node.op, ast.Div):
            return left / right
        if isinstance(node.op, ast.FloorDiv):
            return Fraction(left // right)
        if right.denominator != 1 or abs(right) > _MAX_EXPONENT:
            raise ValueError(f"exponent {right} is not an integer of at most {_MAX_EXPONENT}")
        if right < 0 and left == 0:
            raise ValueError("zero to a negative power in formula")
        size = max(left.numerator.bit_length(), left.denominator.bit_length())
        if size * abs(int(right)) > _MAX_RESULT_BITS:
            raise ValueError(f"power too large in formula (over {_MAX_RESULT_BITS} bits)")
        return left ** int(right)
    raise ValueError(f"not allowed in a formula: {ast.dump(node)[:60]}")


def evaluate_fraction(formula: str, **sizes: int) -> Fraction:
    """The exact rational value of an arithmetic formula (e.g. a failure probability)."""
    if not isinstance(formula, str):
        raise ValueError(f"a formula is a string, got {type(formula).__name__}")
    for key, value in sizes.items():
        if type(value) is not int:
            raise ValueError(f"size {key}={value!r} is not an int")
    if len(formula) > _MAX_FORMULA_CHARS:
        raise ValueError(f"formula longer than {_MAX_FORMULA_CHARS} characters")
    try:
        return _eval(ast.parse(formula.strip(), mode="eval"), sizes)
    except SyntaxError as e:
        raise ValueError(f"formula {formula!r} does not parse: {e.msg}") from None
    except RecursionError:
        raise ValueError(f"formula nested too deeply: {formula[:40]!r}...") from None


def evaluate(formula: str, **sizes: int) -> int:
    """The integer value of an arithmetic formula in the given sizes (ValueError otherwise)."""
    value = evaluate_fraction(formula, **sizes)
    if value.denominator != 1:
        raise ValueError(f"formula {formula!r} is not an integer here ({value})")
    return int(value)


def evaluate_table(table: dict[str, Any], **sizes: int) -> dict[str, int]:
    """Every formula (string value) of a spec table, evaluated; other entries are skipped."""
    return {k: evaluate(v, **sizes) for k, v in table.items() if isinstance(v, str)}


def derive_sizes(table: dict[str, Any], **sizes: int) -> dict[str, int]:
    """sizes extended by a spec's [sizes] formulas, in file order (later ones may use earlier)."""
    out = dict(sizes)
    for key, formula in table.items():
        if isinstance(formula, str):
            out[key] = evaluate(formula, **out)
    return out


__all__ = ["derive_sizes", "evaluate", "evaluate_fraction", "evaluate_table", "load_spec",
           "protocols_dir"]
