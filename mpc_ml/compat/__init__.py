"""Compatibility with other frameworks' APIs (CrypTen's, in crypten.py, is its own issue).

The top layer beside serving/: may import anything below it, nothing imports it.
"""
