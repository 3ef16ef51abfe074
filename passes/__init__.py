"""Passes over tilefuse IR, one per file: canonicalization, fusion, lowering.

Imports `tilefuse.ir` only.
"""
