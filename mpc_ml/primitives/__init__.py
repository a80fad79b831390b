"""Protocols on shares: sharing and opening, Beaver products, truncation, binary sharing
(AND, A2B, B2A), comparisons, and the nonlinear approximations.

Every function takes a Session and int64 share tensors and returns shares; none knows
MPCTensor. Imports the session, core/ and config (and, through the session, the
communicator and provider). Each protocol has a spec in protocols/ that tests hold its
rounds and bytes to. A new protocol is a new file here plus its spec.
"""
from . import approximations
from .beaver import beaver_many, beaver_product
from .binary import a2b, and_many, b2a, b2a_bits, binary_add, open_bits, open_words
from .comparison import ltz, max_along_last, max_one_hot, mul_bits, negative_part, relu, select
from .sharing import open_shares, reveal, share_input, zero_share
from .truncation import truncate

__all__ = ["a2b", "and_many", "approximations", "b2a", "b2a_bits", "beaver_many", "beaver_product",
           "binary_add", "ltz", "max_along_last", "max_one_hot", "mul_bits", "negative_part",
           "open_bits", "open_shares", "open_words", "relu", "reveal", "select", "share_input",
           "truncate", "zero_share"]
