"""Compatibility with other frameworks' APIs: `compat.crypten` is CrypTen 0.4.1's.

The top layer beside serving/: may import anything below it, nothing imports it.
"""
from __future__ import annotations

import sys


def install() -> None:
    """Make `import crypten` (and crypten.nn, crypten.mpc, crypten.optim, crypten.comm,
    crypten.communicator) resolve to mpc_ml.compat.crypten."""
    from . import crypten
    sys.modules["crypten"] = crypten
    for name in ("nn", "mpc", "optim"):
        sys.modules[f"crypten.{name}"] = getattr(crypten, name)
    sys.modules["crypten.comm"] = sys.modules["crypten.communicator"] = crypten.comm


__all__ = ["install"]
