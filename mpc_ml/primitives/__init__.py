"""Protocols on shares: sharing, opening, Beaver products, truncation."""
from .beaver import beaver_many, beaver_product
from .binary import a2b, and_many, b2a, b2a_bits, binary_add, open_bits, open_words
from .comparison import ltz, max_along_last, max_one_hot, mul_bits, relu, select
from .sharing import open_shares, reveal, share_input, zero_share
from .truncation import truncate

__all__ = ["a2b", "and_many", "b2a", "b2a_bits", "beaver_many", "beaver_product", "binary_add",
           "ltz", "max_along_last", "max_one_hot", "mul_bits", "open_bits", "open_shares", "open_words", "relu",
           "reveal", "select", "share_input", "truncate", "zero_share"]
