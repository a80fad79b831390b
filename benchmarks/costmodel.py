"""The cost model of protocols/ for the suite's rows: rounds and bytes sent per party.

predict(row name, inputs, n) evaluates the spec section that covers the row whole
(protocols/approximations.toml: exp, reciprocal, sigmoid, softmax) with mpc_ml.specs;
rows that compose several specs (products with truncation, comparisons, models) give
None, and the suite prints '-' in its spec column for them.
"""
from __future__ import annotations

from mpc_ml.specs import derive_sizes, evaluate_table, load_spec

SECTIONS = {"exp1e5": "exp", "exp1e6": "exp", "reciprocal1e5": "reciprocal",
            "reciprocal1e6": "reciprocal", "sigmoid1e5": "sigmoid", "sigmoid1e6": "sigmoid",
            "softmax1e5": "softmax", "softmax1e6": "softmax"}


def _tournament(rows: int, k: int) -> dict:
    """levels, bit_bytes and slice_words of the max tournament along a dim of k."""
    levels = bit_bytes = slice_words = 0
    length = k
    while length > 1:
        pairs = length // 2
        levels += 1
        bit_bytes += (rows * pairs + 7) // 8
        slice_words += (rows * pairs + 63) // 64
        length -= pairs
    return {"levels": levels, "bit_bytes": bit_bytes, "slice_words": slice_words}


def predict(name: str, inputs: tuple, n: int) -> dict | None:
    section_name = SECTIONS.get(name)
    if section_name is None:
        return None
    spec = load_spec("approximations")
    section = spec[section_name]
    x = inputs[0]
    sizes = {"n": n, "numel": x.numel()}
    if section_name == "softmax":
        k = x.shape[-1]
        sizes.update(k=k, **_tournament(x.numel() // k, k))
    sizes = derive_sizes(spec.get("sizes", {}), **sizes)
    sizes = derive_sizes(section.get("sizes", {}), **sizes)
    cost = evaluate_table(section["cost"]["all"], **sizes)
    return {"section": f"approximations.{section_name}", "rounds": [cost["rounds"]] * n,
            "bytes_sent": [cost["bytes_sent"]] * n}
