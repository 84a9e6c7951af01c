"""Reading recordings: finding audio files, decoding with quality flags, container checks.

Shared by the builder and prediction; no torch at import time (decoder processes import it).
"""
