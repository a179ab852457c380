"""Segment Anything backend for Label Studio: one module per capability."""

__version__ = "0.1.0"
