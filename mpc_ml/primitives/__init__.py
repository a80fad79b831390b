"""Protocols on shares: sharing, opening, Beaver products, truncation."""
from .beaver import beaver_product
from .sharing import open_shares, reveal, share_input, zero_share
from .truncation import truncate

__all__ = ["beaver_product", "open_shares", "reveal", "share_input", "truncate", "zero_share"]
