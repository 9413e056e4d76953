"""Compiled extension modules built from ``native/`` (Cython over OpenSSL).

Nothing here is imported directly by users; see ``callsgw.srtp``.
"""
