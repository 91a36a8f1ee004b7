"""imgq: turn a folder where photos arrive into a processed, replicated, browsable archive."""

__version__ = "0.1.0"
