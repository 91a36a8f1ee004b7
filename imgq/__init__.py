"""imgq: turn a folder where photos arrive into a processed, replicated, browsable archive."""

__version__ = "0.1.0"
__date__ = "2026-11-29"  # of this version; man pages carry it (bin/gen-docs)
