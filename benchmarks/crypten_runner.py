"""CrypTen 0.4.1 side of the suite (placeholder until the runner is filled in)."""
from __future__ import annotations

from pathlib import Path


def run_from_suite(python: str, rows, parties, quick: bool, repeats: int):
    """(results keyed 'row/parties', None) or (None, why it did not run)."""
    if not Path(python).exists():
        return None, f"no CrypTen interpreter at {python} (see benchmarks/README.md)"
    return None, "the CrypTen runner is not written yet"
