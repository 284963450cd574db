"""Embedding extraction: preprocessing (MONAI), the in-process runner and the built-in extractors.

Kept import-light on purpose: ``ctfm.extract.extractors.hu_stats`` must import with numpy alone (it runs
inside the baseline container), so nothing here imports torch or MONAI at module level.
"""
