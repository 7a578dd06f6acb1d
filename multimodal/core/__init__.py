"""The bottom layer: the registry, atomic file writes, provenance and config helpers.

Imports nothing else of ``multimodal``; ``encoders`` and ``fusion`` build on it.
"""
