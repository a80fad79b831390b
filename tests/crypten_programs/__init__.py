"""CrypTen programs as CrypTen's examples and tutorials write them; only the import
differs (`import mpc_ml.compat.crypten as crypten`). tests/test_compat_crypten.py runs
them and checks their results against torch."""
