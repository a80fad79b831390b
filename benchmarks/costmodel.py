"""The cost model of protocols/ for the suite's rows: rounds and bytes sent per party.

ROWS maps each op row to (spec file, section, a function giving the formula variables
from the row's inputs); predict() evaluates that section's cost.all formulas with
mpc_ml.specs after the spec's [sizes] (top level, then each enclosing section's) and
check() compares them with the measured party-to-party counters. The products are the
[composed] sections (Beaver product + exact truncation), relu and the tournament max
come from comparison.toml, the nonlinear functions from approximations.toml. Models
have no whole-model spec: check() says so. Dealer counters are not checked.
"""
from __future__ import annotations

import math

import torch

from mpc_ml.core.specs import derive_sizes, evaluate_table, load_spec


def _tree_open_words(m: int, n: int) -> int:
    """Words msb on m elements opens after its carry-save reduction (comparison.toml's
    tree_open_words: 22 per element below 13 elements, else 272 per 64; for 2 parties the
    first AND is and_held, one word fewer per ANDed word: 21 and 209)."""
    held = 1 if n == 2 else 0
    return (22 - held) * m if m < 13 else (272 - 63 * held) * ((m + 63) // 64)


def _tournament(rows: int, k: int, n: int) -> dict:
    """levels, bit_bytes and tree_open_words_levels of the max tournament along a dim of k."""
    levels = bit_bytes = words = 0
    length = k
    while length > 1:
        pairs = length // 2
        levels += 1
        bit_bytes += (rows * pairs + 7) // 8
        words += _tree_open_words(rows * pairs, n)
        length -= pairs
    return {"levels": levels, "bit_bytes": bit_bytes, "tree_open_words_levels": words}


def _mul(x, y, n: int) -> dict:
    z = torch.broadcast_shapes(x.shape, y.shape)
    return {"numel_x": x.numel(), "numel_y": y.numel(), "numel_z": math.prod(z)}


def _matmul(x, y, n: int) -> dict:  # 2-d operands (the suite's rows)
    return {"batch_x": 1, "batch_y": 1, "batch_z": 1, "M": x.shape[0], "K": x.shape[1],
            "N": y.shape[1]}


def _conv2d(x, w, n: int) -> dict:  # the row's x.conv2d(w, padding=1)
    return {"N": x.shape[0], "C_in": x.shape[1], "H": x.shape[2], "W": x.shape[3],
            "C_out": w.shape[0], "kH": w.shape[2], "kW": w.shape[3], "groups": 1,
            "stride_h": 1, "stride_w": 1, "pad_h": 1, "pad_w": 1, "dil_h": 1, "dil_w": 1}


def _numel(x, n: int) -> dict:
    return {"numel": x.numel()}


def _max(x, n: int) -> dict:  # x.max(-1): values and indices (selected = 2)
    k = x.shape[-1]
    return {"rows": x.numel() // k, "k": k, "selected": 2, **_tournament(x.numel() // k, k, n)}


def _softmax(x, n: int) -> dict:
    k = x.shape[-1]
    return {"numel": x.numel(), "k": k, **_tournament(x.numel() // k, k, n)}


def _softmax_path(x) -> str:
    """softmax(-1)'s section: all pairs for a last dim of 2 to 10 (ALL_PAIRS_UP_TO), else
    the tournament (approximations.toml)."""
    return "softmax." + ("all_pairs" if 2 <= x.shape[-1] <= 10 else "tournament")


# row -> (spec file, section (dotted, or a function of the inputs giving it), variables from
# the inputs and n[, extra [sizes] table])
ROWS = {
    "mul1e6": ("beaver_mul", "composed", _mul),
    "matmul256": ("beaver_matmul", "composed", _matmul),
    "matmul1024": ("beaver_matmul", "composed", _matmul),
    "conv2d": ("beaver_conv", "composed", _conv2d, "sizes.conv2d"),
    **{f"relu{s}": ("comparison", "relu", _numel) for s in ("1e5", "1e6")},
    "max1e5": ("comparison", "max_along_last.total", _max),
    **{f"{f}{s}": ("approximations", _softmax_path if f == "softmax" else f,
                   _softmax if f == "softmax" else _numel)
       for f in ("exp", "reciprocal", "sigmoid", "softmax") for s in ("1e5", "1e6")},
}
NO_MODEL_SPEC = "n/a (no model spec)"
FSS_ROWS = {**{f"relu{s}": ("fss_comparison", "relu", _numel) for s in ("1e5", "1e6")},
            "max1e5": ("fss_comparison", "max_along_last", _max)}
"""Rows with a spec under Config(comparison='fss'); the other comparison rows have none."""
NO_FSS_SPEC = "n/a (no fss spec)"
WITHOUT_COMPARISONS = {"mul", "matmul", "conv2d", "exp", "reciprocal"}
"""Row families whose cost does not depend on config.comparison."""


def _table(node: dict, path: str) -> dict:
    for key in path.split("."):
        node = node[key]
    return node


def predict(name: str, inputs: tuple, n: int, comparison: str = "circuit") -> dict | None:
    """{'section', 'rounds', 'bytes_sent'} per party for an op row; None for other rows
    (and, under comparison='fss', for the rows whose comparisons have no fss spec)."""
    entry = ROWS.get(name)
    if comparison == "fss" and name.rstrip("0123456789e") not in WITHOUT_COMPARISONS:
        entry = FSS_ROWS.get(name)
    if entry is None:
        return None
    spec_name, section_name, variables, *extra = entry
    if callable(section_name):
        section_name = section_name(*inputs)
    spec = load_spec(spec_name)
    sizes = derive_sizes(spec.get("sizes", {}), n=n, **variables(*inputs, n=n))
    parts = section_name.split(".")
    for i in range(1, len(parts) + 1):  # [section.sizes] of each enclosing section
        sizes = derive_sizes(_table(spec, ".".join(parts[:i])).get("sizes", {}), **sizes)
    for path in extra:
        sizes = derive_sizes(_table(spec, path), **sizes)
    cost = evaluate_table(_table(spec, section_name)["cost"]["all"], **sizes)
    return {"section": f"{spec_name}.{section_name}", "rounds": [cost["rounds"]] * n,
            "bytes_sent": [cost["bytes_sent"]] * n}


def check(spec: dict | None, rounds: list, bytes_sent: list,
          missing: str = NO_MODEL_SPEC) -> tuple[bool | None, str]:
    """(match, text): 'equal', 'differs: ...' with both numbers, or `missing` (why there
    is no spec: NO_MODEL_SPEC, NO_FSS_SPEC)."""
    if spec is None:
        return None, missing
    diffs = [f"{key} measured {'/'.join(map(str, got))} spec {'/'.join(map(str, spec[key]))}"
             for key, got in (("rounds", rounds), ("bytes_sent", bytes_sent))
             if list(got) != list(spec[key])]
    return (False, "differs: " + "; ".join(diffs)) if diffs else (True, "equal")
