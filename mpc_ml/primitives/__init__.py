"""Protocols on shares: sharing and opening, Beaver products, truncation, binary sharing
(AND, A2B, B2A), comparisons, private uniform randomness, and the nonlinear approximations.

Every function takes a Session and int64 share tensors and returns shares; none knows
MPCTensor. Imports the session, core/ and config (and, through the session, the
communicator and provider). Each protocol has a spec in protocols/ that tests hold its
rounds and bytes to. A new protocol is a new file here plus its spec.
"""
from . import approximations
from .beaver import beaver_many, beaver_product, fixed_mask_product
from .binary import (a2b, and_many, and_monomials, b2a, b2a_bits, binary_add, bit_products, open_bits,
                     open_words)
from .comparison import (ALL_PAIRS_UP_TO, ltz, ltz_times, max_all_pairs, max_along_last, max_one_hot,
                         mul_bits, negative_part, relu, select)
from .lazy_product import lazy_products
from .random import uniform_share
from .sharing import flush_riders, open_shares, reveal, ride, share_input, zero_share
from .truncation import truncate, truncate_later

__all__ = ["ALL_PAIRS_UP_TO", "a2b", "and_many", "and_monomials", "approximations", "b2a", "b2a_bits",
           "beaver_many", "beaver_product", "binary_add", "bit_products", "fixed_mask_product",
           "flush_riders", "lazy_products", "ltz", "ltz_times", "max_all_pairs", "max_along_last",
           "max_one_hot", "mul_bits", "negative_part", "open_bits", "open_shares", "open_words", "relu",
           "reveal", "ride", "select", "share_input", "truncate", "truncate_later", "uniform_share",
           "zero_share"]
