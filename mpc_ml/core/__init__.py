"""Pure computation, no communication: the ring Z_2^64 (int64 kernels, CUDA limb
products), the fixed-point codec, the cryptographic PRG, the Op names, conv/pool
geometry, and the protocol specs' formula evaluator.

Imports nothing of mpc_ml but config; every other layer may import it.
"""
