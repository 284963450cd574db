"""The bottom layer every stage shares: benchmark config, label files, errors, filesystem, NIfTI I/O, hashing.

It imports nothing else from ctfm, so any package may import it.
"""
