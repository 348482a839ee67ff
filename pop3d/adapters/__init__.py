"""Implementations of the ports over one third-party library each, plus in-process versions."""
