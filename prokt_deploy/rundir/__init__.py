"""A run directory: how it is written (``workspace``: staged, atomic, locked, resumable from ``checkpoint``)
and how a finished one is read back by every later stage (``reader``)."""
